"""Report: the paper's tables and figures, from the store and the config alone (see :mod:`speedy.report`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from speedy.report import write_report

if TYPE_CHECKING:
    from speedy.pipeline import Study


def run(study: Study) -> None:
    write_report(study.store, study.config, study.console)
