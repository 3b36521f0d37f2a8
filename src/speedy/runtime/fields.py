"""What a prediction input is made of, for every task type: its text fields, and the error of an input the model
cannot take. Torch-free: the serving schemas and ``speedy predict`` read these."""

from __future__ import annotations

from dataclasses import dataclass

from speedy.errors import SpeedyError


class InputError(SpeedyError):
    """An input the model cannot take; the message starts with the field at fault (``question: ...``)."""


@dataclass(frozen=True)
class InputField:
    """One text field of a prediction input: a field of the server's request schema and, named ``text``,
    ``text_pair``, ``question`` or ``context``, an option of ``speedy predict``."""

    description: str | None = None
    required: bool = True


def raise_first_input_error(results: list) -> list:
    """``results`` as they are, unless one is an ``InputError`` (an input the model cannot take): then the first
    is raised (what ``speedy predict`` wants; the server takes each result on its own)."""
    for result in results:
        if isinstance(result, InputError):
            raise result
    return results
