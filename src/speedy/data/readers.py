"""Readers for local labelled text files (TSV, CSV, JSONL) and for Hub datasets, into ``datasets.Dataset``.

Every example keeps the line it came from (column ``line``), so later checks (an unknown label, a missing
side of a pair) can name the file and line. Errors are :class:`~speedy.errors.SpeedyError` with one line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from datasets import Dataset

from speedy.errors import SpeedyError, where

FORMATS = ("tsv", "csv", "jsonl")


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise SpeedyError(f"{path}: file not found")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise SpeedyError(f"{where(path, line)}: not valid UTF-8 (byte {error.start})") from None


def _records(path: Path, fmt: str, columns: list[str] | None):
    """Yield ``(line_number, {column: value})`` for every non-blank row."""
    lines = _read_lines(path)
    if fmt == "jsonl":
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise SpeedyError(f"{where(path, number)}: malformed JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise SpeedyError(f"{where(path, number)}: a JSON object was expected")
            yield number, record
        return
    delimiter = "\t" if fmt == "tsv" else ","
    quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
    rows = csv.reader(lines, delimiter=delimiter, quoting=quoting)
    header = columns
    for number, row in enumerate(rows, start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            continue
        if len(row) != len(header):
            raise SpeedyError(f"{where(path, number)}: malformed row: {len(row)} fields, expected "
                              f"{len(header)} ({', '.join(header)})")
        yield number, dict(zip(header, row))


def read_labelled_texts(path: str | Path, text: str = "text", label: str = "label", text_pair: str | None = None,
                        fmt: str | None = None, columns: list[str] | None = None) -> Dataset:
    """Read a classification file into columns ``text``, ``text_pair`` (pairs only), ``label``, ``line``.

    ``fmt`` is ``tsv``, ``csv`` or ``jsonl`` (default: from the file's suffix). TSV and CSV files have a
    header row unless ``columns`` names the columns (MLDoc, for example, is ``label<TAB>text`` with none).
    """
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise SpeedyError(f"{path}: unknown file format '{fmt}' (allowed: {', '.join(FORMATS)})")
    fields = {"text": text, "label": label} | ({"text_pair": text_pair} if text_pair else {})
    out = {name: [] for name in fields} | {"line": []}
    for number, record in _records(path, fmt, columns):
        for name, column in fields.items():
            if column not in record:
                raise SpeedyError(f"{where(path, number)}: no column '{column}' (has: {', '.join(record)})")
            value = record[column]
            value = "" if value is None else str(value).strip()
            if not value:
                side = {"text": "the text", "text_pair": "the second text of the pair", "label": "the label"}[name]
                raise SpeedyError(f"{where(path, number)}: {side} ('{column}') is empty")
            out[name].append(value)
        out["line"].append(number)
    if not out["line"]:
        raise SpeedyError(f"{path}: no examples (the split is empty)")
    return Dataset.from_dict(out)


def load_hub_split(name: str, config: str | None, split: str, text: str, label: str,
                   text_pair: str | None = None) -> Dataset:
    """A split of a Hub dataset, in the same columns as :func:`read_labelled_texts` (for users with the Hub)."""
    from datasets import load_dataset

    try:
        dataset = load_dataset(name, config, split=split)
    except Exception as error:  # noqa: BLE001 - offline, unknown name, unknown split: all the same to the user
        raise SpeedyError(f"data.hub: cannot load '{name}' ({config}) split '{split}': "
                          f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    names = dataset.features[label].names if hasattr(dataset.features[label], "names") else None
    columns = {"text": [str(t) for t in dataset[text]],
               "label": [names[v] if names else str(v) for v in dataset[label]],
               "line": list(range(1, len(dataset) + 1))}
    if text_pair:
        columns["text_pair"] = [str(t) for t in dataset[text_pair]]
    return Dataset.from_dict(columns)
