"""Readers for local labelled text files (TSV, CSV, JSONL) and for Hub datasets, into ``datasets.Dataset``.

Every example keeps the line it came from (column ``line``), so later checks (an unknown label, a missing
side of a pair) can name the file and line. Errors are :class:`~speedy.errors.SpeedyError` with one line.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from datasets import Dataset, load_dataset

from speedy.errors import SpeedyError, where

FORMATS = ("tsv", "csv", "jsonl")


def read_text(path: Path) -> str:
    """A file's text: UTF-8 (a bad byte names its line), a leading BOM dropped (utf-8-sig: any file may have one,
    and kept it would stick to the first header, word or JSON value)."""
    path = Path(path)
    if not path.is_file():
        raise SpeedyError(f"{path}: file not found")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise SpeedyError(f"{where(path, line)}: not valid UTF-8 (byte {error.start})") from None


def _read_lines(path: Path) -> list[str]:
    # Only \n (or \r\n) ends a line: str.splitlines would also split on U+2028, U+0085, \x0b, \x0c, \x1c-\x1e...
    # inside a field, cutting a row in two.
    text = read_text(path)
    return [line.removesuffix("\r") for line in text.removesuffix("\n").split("\n")] if text else []


# The file is already in memory, so the csv module's 128 KiB field guard protects nothing; a field above this
# (16 Mi characters, far beyond any text a model reads) is still refused, with its line.
CSV_FIELD_LIMIT = 1 << 24


def _csv_rows(path: Path, lines: list[str], fmt: str):
    """Yield ``(line where the row begins, row)``; a malformed row is an error naming that line."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    delimiter = "\t" if fmt == "tsv" else ","
    quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
    # Lines keep their \n, so a quoted field may span lines as CSV allows. strict: a quote never closed is an
    # error (at the end of the file, or at the next quote), not a silent merge of the lines after it into one row.
    rows = csv.reader((line + "\n" for line in lines), delimiter=delimiter, quoting=quoting, strict=True)
    while True:
        first = rows.line_num + 1
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as error:
            message = str(error)
            if "field limit" in message:
                reason = f"a field longer than {CSV_FIELD_LIMIT} characters"
            elif "new-line" in message:
                reason = "a carriage return (\\r) inside an unquoted field"
            elif "end of data" in message or rows.line_num > first:
                reason = "a quote opened in the row that starts here is never closed"
            elif "expected after" in message:
                reason = 'text after a closing quote (a quote inside a quoted field is written "")'
            else:
                reason = f"malformed row ({message})"
            raise SpeedyError(f"{where(path, first)}: {reason}") from None
        yield first, row


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
    header = columns
    for number, row in _csv_rows(path, lines, fmt):
        if not row or all(not cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            twice = sorted({name for name in header if header.count(name) > 1})
            if twice:  # dict(zip(...)) would keep only the last of them
                raise SpeedyError(f"{where(path, number)}: column '{twice[0]}' appears twice in the header")
            continue
        if len(row) != len(header):
            raise SpeedyError(f"{where(path, number)}: malformed row: {len(row)} fields, expected "
                              f"{len(header)} ({', '.join(header)})")
        yield number, dict(zip(header, row))


def read_labelled_texts(path: str | Path, text: str = "text", label: str = "label", text_pair: str | None = None,
                        fmt: str | None = None, columns: list[str] | None = None, keep: dict | None = None,
                        label_map: dict | None = None) -> Dataset:
    """Read a classification file into columns ``text``, ``text_pair`` (pairs only), ``label``, ``line``.

    ``fmt`` is ``tsv``, ``csv`` or ``jsonl`` (default: from the file's suffix). TSV and CSV files have a
    header row unless ``columns`` names the columns (MLDoc, for example, is ``label<TAB>text`` with none).
    ``keep`` keeps only the rows whose columns have these values (XNLI's dev/test files hold 15 languages);
    ``label_map`` renames labels (XNLI-MT's ``contradictory`` is XNLI's ``contradiction``).
    """
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise SpeedyError(f"{path}: unknown file format '{fmt}' (allowed: {', '.join(FORMATS)})")
    fields = {"text": text, "label": label} | ({"text_pair": text_pair} if text_pair else {})
    out = {name: [] for name in fields} | {"line": []}
    for number, record in _records(path, fmt, columns):
        if keep and any(record.get(column) != value for column, value in keep.items()):
            continue
        for name, column in fields.items():
            if column not in record:
                raise SpeedyError(f"{where(path, number)}: no column '{column}' (has: {', '.join(record)})")
            value = record[column]
            value = "" if value is None else str(value).strip()
            if not value:
                side = {"text": "the text", "text_pair": "the second text of the pair", "label": "the label"}[name]
                raise SpeedyError(f"{where(path, number)}: {side} ('{column}') is empty")
            out[name].append(label_map.get(value, value) if label_map and name == "label" else value)
        out["line"].append(number)
    if not out["line"]:
        raise SpeedyError(f"{path}: no examples (the split is empty)")
    return Dataset.from_dict(out)


def load_hub(name: str, config: str | None, split: str):
    """A split of a Hub dataset, for users who have the Hub; one clear line when it cannot be had."""
    try:
        return load_dataset(name, config, split=split)
    except Exception as error:  # noqa: BLE001 - offline, unknown name, unknown split: all the same to the user
        raise SpeedyError(f"data.hub: cannot load '{name}' ({config}) split '{split}': "
                          f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None


def load_hub_split(name: str, config: str | None, split: str, text: str, label: str,
                   text_pair: str | None = None) -> Dataset:
    """A split of a Hub dataset, in the same columns as :func:`read_labelled_texts` (for users with the Hub)."""
    dataset = load_hub(name, config, split)
    names = dataset.features[label].names if hasattr(dataset.features[label], "names") else None
    columns = {"text": [str(t) for t in dataset[text]],
               "label": [names[v] if names else str(v) for v in dataset[label]],
               "line": list(range(1, len(dataset) + 1))}
    if text_pair:
        columns["text_pair"] = [str(t) for t in dataset[text_pair]]
    return Dataset.from_dict(columns)


# ------------------------------------------------------------------------------------------- tagging


def _tagged_dataset(sentences: list[tuple[list[str], list[str], list[int]]], path) -> Dataset:
    if not sentences:
        raise SpeedyError(f"{path}: no sentences (the split is empty)")
    tokens, tags, lines = zip(*sentences)
    return Dataset.from_dict({"tokens": list(tokens), "tags": list(tags), "lines": list(lines),
                              "line": [sentence_lines[0] for sentence_lines in lines]})


COLUMN_SEPARATOR = re.compile(r"[ \t]+")


def read_conll(path: str | Path, tag_column: int = -1) -> Dataset:
    """A CoNLL file (``word [extra columns] tag``, blank line between sentences, ``-DOCSTART-`` lines skipped)
    into columns ``tokens``, ``tags``, ``lines`` (each token's line) and ``line`` (the sentence's first line)."""
    path = Path(path)
    sentences, words, tags, lines = [], [], [], []

    def close():
        if words:
            sentences.append((list(words), list(tags), list(lines)))
        words.clear(), tags.clear(), lines.clear()

    for number, line in enumerate(_read_lines(path), start=1):
        # Columns are separated by spaces or tabs only: str.split() would also split a word at a no-break space
        # (U+00A0, as in "10 000") or U+2028 and silently drop the rest of it.
        fields = COLUMN_SEPARATOR.split(line.strip(" \t"))
        if fields == [""]:
            close()
            continue
        if fields[0] == "-DOCSTART-":
            close()
            continue
        if len(fields) < 2 or line[:1] in (" ", "\t"):
            raise SpeedyError(f"{where(path, number)}: a tag with no word ('{' '.join(fields)}')")
        words.append(fields[0])
        tags.append(fields[tag_column])
        lines.append(number)
    close()
    return _tagged_dataset(sentences, path)


def read_conllu(path: str | Path, column: int = 3) -> Dataset:
    """A CoNLL-U file into the columns of :func:`read_conll`, tags from ``column`` (3 = UPOS, 0-based).

    Multi-word token ranges (``3-4``) are skipped, their syntactic words kept; empty nodes (``5.1``) are skipped.
    """
    path = Path(path)
    sentences, words, tags, lines = [], [], [], []
    first_line = None
    for number, line in enumerate(_read_lines(path) + [""], start=1):
        if not line.strip(" \t"):  # a line of other (Unicode) spaces is no sentence break: its column count fails
            if words:
                sentences.append((list(words), list(tags), list(lines)))
            elif first_line is not None:
                raise SpeedyError(f"{where(path, first_line)}: a sentence with no tokens")
            words.clear(), tags.clear(), lines.clear()
            first_line = None
            continue
        if first_line is None:
            first_line = number
        if line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 10:
            raise SpeedyError(f"{where(path, number)}: {len(fields)} tab-separated columns, CoNLL-U has 10")
        token_id = fields[0]
        if "-" in token_id or "." in token_id:
            continue
        if not fields[1] or not fields[column] or fields[column] == "_":
            raise SpeedyError(f"{where(path, number)}: a token with no word or no tag")
        words.append(fields[1])
        tags.append(fields[column])
        lines.append(number)
    return _tagged_dataset(sentences, path)


def read_tagged(path: str | Path, fmt: str | None = None, tag_column: int | None = None) -> Dataset:
    """CoNLL-U for ``.conllu`` files, CoNLL otherwise (or as ``fmt`` says)."""
    path = Path(path)
    fmt = fmt or ("conllu" if path.suffix.lower() == ".conllu" else "conll")
    if fmt == "conllu":
        return read_conllu(path, 3 if tag_column is None else tag_column)
    if fmt == "conll":
        return read_conll(path, -1 if tag_column is None else tag_column)
    raise SpeedyError(f"{path}: unknown tagging format '{fmt}' (allowed: conll, conllu)")


def load_hub_tagging(name: str, config: str | None, split: str, tokens: str = "tokens",
                     tags: str = "ner_tags") -> Dataset:
    """A split of a Hub tagging dataset (``conll2002`` es, ``universal_dependencies`` es_ancora: ``upos``)."""
    dataset = load_hub(name, config, split)
    feature = dataset.features[tags].feature
    names = feature.names if hasattr(feature, "names") else None
    sentences = []
    for i, row in enumerate(dataset, start=1):
        labels = [names[t] if names else str(t) for t in row[tags]]
        sentences.append((list(row[tokens]), labels, [i] * len(labels)))
    return _tagged_dataset(sentences, f"{name}:{split}")
