"""SQuAD v1.1 JSON (the format of SQuAD-es, MLQA, SQAC, TAR and XQuAD) into a ``datasets.Dataset``.

Columns: ``id``, ``title``, ``context``, ``question``, ``answers`` (``{"text": [...], "answer_start": [...]}``).
Errors name the file and the question id. Answers whose ``answer_start`` does not point at their text are
counted and reported (with the first few), then kept as they are (``bad_answers="keep"``), dropped
(``"drop"``), or moved to the text's position when it occurs exactly once in the context (``"fix"``; the others
are dropped). Empty answers (no text, or a negative ``answer_start``, as SQuAD-es has where the translation
lost the answer) are counted, reported and dropped; a question left with no answer is dropped.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from datasets import Dataset

from speedy.data.readers import load_hub, read_text
from speedy.errors import SpeedyError

BAD_ANSWER_POLICIES = ("keep", "drop", "fix")


def read_squad(path: str | Path, require_answers: bool = True, bad_answers: str = "fix",
               report=print) -> Dataset:
    """Every question of a SQuAD v1.1 JSON file, one row each (``id``, ``title``, ``context``, ``question``,
    ``answers``). Answers whose ``answer_start`` misses their text are kept, dropped or fixed (``bad_answers``)
    and reported; a malformed file or question is a one-line error naming the file and the question."""
    path = Path(path)
    if bad_answers not in BAD_ANSWER_POLICIES:
        raise SpeedyError(f"data.bad_answers: unknown policy '{bad_answers}' (allowed: {', '.join(BAD_ANSWER_POLICIES)})")
    rows = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    mismatched, empty = [], []
    for article, context, qa in _questions(path):
        qid = qa["id"]
        answers = qa.get("answers", [])
        if require_answers and not answers:
            raise SpeedyError(f"{path}: question id {qid}: empty answer list")
        texts, starts = _answers(path, qid, context, answers, bad_answers, mismatched, empty)
        if require_answers and not texts:
            continue  # every answer of this question was dropped
        rows["id"].append(str(qid))
        rows["title"].append(str(article.get("title", "")))
        rows["context"].append(context)
        rows["question"].append(qa["question"])
        rows["answers"].append({"text": texts, "answer_start": starts})
    if mismatched:
        shown = "; ".join(f"{qid}: '{text}' at {start}" for qid, text, start in mismatched[:3])
        report(f"{path}: {len(mismatched)} answers whose answer_start does not point at their text "
               f"({bad_answers}): {shown}")
    if empty:
        report(f"{path}: {len(empty)} empty answers (no text, or answer_start < 0) dropped; first in question "
               f"{empty[0]}")
    if not rows["id"]:
        raise SpeedyError(f"{path}: no questions (the split is empty)")
    return Dataset.from_dict(rows)


def _questions(path: Path):
    """``(article, context, question)`` for every question of the file, each checked for its shape; a question
    id used twice is an error naming both places (predictions and gold answers are keyed by id)."""
    try:
        document = json.loads(read_text(path))  # a leading BOM dropped; a bad byte names its line
    except json.JSONDecodeError as error:
        raise SpeedyError(f"{path}:{error.lineno}: malformed JSON ({error.msg})") from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise SpeedyError(f"{path}: not SQuAD-shaped JSON (no top-level 'data' list)")
    seen = {}  # question id -> where it was first seen
    for a, article in enumerate(document["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise SpeedyError(f"{path}: not SQuAD-shaped JSON (an article without a 'paragraphs' list)")
        for p, paragraph in enumerate(paragraphs):
            qas = paragraph.get("qas") if isinstance(paragraph, dict) else None
            if not isinstance(qas, list):
                raise SpeedyError(f"{path}: not SQuAD-shaped JSON (a paragraph without a 'qas' list)")
            context = paragraph.get("context")
            for q, qa in enumerate(qas):
                place = f"data[{a}].paragraphs[{p}].qas[{q}]"  # json gives no line numbers for values
                _check_question(path, place, qa, context, seen)
                yield article, context, qa


def _check_question(path: Path, place: str, qa, context, seen: dict) -> None:
    if not isinstance(qa, dict):
        raise SpeedyError(f"{path}: {place}: not SQuAD-shaped (a question that is not a JSON object)")
    qid = qa.get("id")
    if not isinstance(qid, (str, int)) or isinstance(qid, bool) or not str(qid).strip():
        raise SpeedyError(f"{path}: {place}: a question with no 'id'")
    if str(qid) in seen:
        raise SpeedyError(f"{path}: question id {qid} occurs twice ({seen[str(qid)]} and {place}); "
                          f"ids must be unique, F1 is scored by id")
    seen[str(qid)] = place
    if not isinstance(qa.get("question"), str) or not isinstance(qa.get("answers", []), list):
        raise SpeedyError(f"{path}: question id {qid}: not SQuAD-shaped (question and answers list)")
    if not isinstance(context, str) or not context.strip():
        raise SpeedyError(f"{path}: question id {qid}: the question has no context")
    if not qa["question"].strip():
        raise SpeedyError(f"{path}: question id {qid}: the question is empty")


def _answers(path: Path, qid, context: str, answers: list, bad_answers: str, mismatched: list,
             empty: list) -> tuple[list[str], list[int]]:
    """A question's usable answers (texts, starts); misplaced ones go to ``mismatched``, empty ones to
    ``empty`` (for the report)."""
    texts, starts = [], []
    for answer in answers:
        text, start = (answer.get("text"), answer.get("answer_start")) if isinstance(answer, dict) else (None, None)
        if not isinstance(text, str) or not isinstance(start, int) or isinstance(start, bool):
            raise SpeedyError(f"{path}: question id {qid}: an answer needs 'text' and 'answer_start'")
        if not text.strip() or start < 0:
            empty.append(qid)  # e.g. SQuAD-es: a translation that lost its answer ('' at -1)
            continue
        if start >= len(context):
            raise SpeedyError(f"{path}: question id {qid}: answer_start {start} is past the end of the context "
                              f"({len(context)} characters)")
        if context[start : start + len(text)] != text:
            mismatched.append((qid, text, start))
            if bad_answers == "drop":
                continue
            if bad_answers == "fix":
                if context.count(text) != 1:
                    continue
                start = context.index(text)
        texts.append(text)
        starts.append(start)
    return texts, starts


def split_by_article(dataset: Dataset, validation_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Train and validation splits that never share an article (seeded)."""
    titles = sorted(set(dataset["title"]))
    random.Random(seed).shuffle(titles)
    held = set(titles[: max(1, round(len(titles) * validation_fraction))])
    keep = [i for i, t in enumerate(dataset["title"]) if t not in held]
    out = [i for i, t in enumerate(dataset["title"]) if t in held]
    return dataset.select(keep), dataset.select(out)


def load_hub_squad(name: str, config: str | None, split: str) -> Dataset:
    """A SQuAD-format Hub dataset (``squad_es``, ``mlqa`` ``mlqa.es.es``, ``PlanTL-GOB-ES/SQAC``, ``xquad``
    ``xquad.es``) for users with the Hub."""
    dataset = load_hub(name, config, split)
    missing = {"id", "context", "question", "answers"} - set(dataset.column_names)
    if missing:
        raise SpeedyError(f"data.hub: '{name}' is not SQuAD-shaped (no column {sorted(missing)[0]})")
    first = {}
    for row, qid in enumerate(dataset["id"], start=1):
        if first.setdefault(str(qid), row) != row:  # F1 is scored by id: a repeated id would pair wrong answers
            raise SpeedyError(f"data.hub: '{name}' split '{split}': question id {qid} occurs twice (rows "
                              f"{first[str(qid)]} and {row})")
    if "title" not in dataset.column_names:
        dataset = dataset.add_column("title", [""] * len(dataset))
    return dataset.select_columns(["id", "title", "context", "question", "answers"])
