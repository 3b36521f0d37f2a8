"""Unlabelled transfer text: plain text the teacher labels with soft targets, so KD students see more examples
than the gold set has (XtremeDistil's lever: Mukherjee and Hassan Awadallah, 2020).

A transfer file holds one sentence or paragraph a line (UTF-8; blank lines are skipped). The task type turns a
line into an example of its own columns with no gold label (``Task.unlabelled_rows``: classification reads a
line as one text; tagging splits it on whitespace into words, the pre-tokenisation of the gold CoNLL files).
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, concatenate_datasets

from speedy.errors import SpeedyError


def read_transfer_lines(paths: list[str]) -> list[tuple[str, int, str]]:
    """``(file, line number, text)`` of every non-blank line of every file, in order."""
    out = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise SpeedyError(f"{path}: transfer file not found (tasks[].transfer_files)")
        try:
            # "\n" only: JSON lines (QA) may hold U+2028/U+2029 unescaped, which splitlines() would cut at
            lines = path.read_text("utf-8-sig").split("\n")
        except UnicodeDecodeError as error:
            raise SpeedyError(f"{path}: not UTF-8 text (byte {error.start})") from None
        before = len(out)
        out += [(str(path), number, line.strip()) for number, line in enumerate(lines, 1) if line.strip()]
        if len(out) == before:
            raise SpeedyError(f"{path}: transfer file has no text (one sentence or paragraph a line)")
    return out


def transfer_texts(paths: list[str]) -> list[str]:
    """The lines themselves (what a pruned vocabulary must keep)."""
    return [text for _, _, text in read_transfer_lines(paths)]


def with_transfer(train_split: Dataset, rows: list[dict]) -> Dataset:
    """The gold training split followed by unlabelled ``rows`` of the same columns (gold examples keep their
    indices, so a cache's first rows are the gold set's)."""
    columns = {name: [row.get(name) for row in rows] for name in train_split.column_names}
    return concatenate_datasets([train_split, Dataset.from_dict(columns, features=train_split.features)])
