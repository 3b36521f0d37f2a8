"""The one error type users see: a single line naming the file and row, or the setting, at fault."""


class SpeedyError(Exception):
    """Bad input or a bad setting. The CLI prints ``str(error)`` on one line and exits with code 2."""


def where(path, line: int | None = None) -> str:
    """Format a location as ``file:line`` for error messages."""
    return f"{path}:{line}" if line is not None else str(path)
