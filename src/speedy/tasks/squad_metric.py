"""Extractive QA metrics exactly as the official SQuAD v1.1 evaluation script defines them.

``normalize_answer``: lower case, remove punctuation (``string.punctuation``), remove the English articles
``a an the``, fix white space. F1 is the bag-of-tokens overlap of the normalised answers; exact match compares
them whole; each question takes the maximum over its gold answers; totals are means times 100.

``articles="es"`` offers a Spanish normalisation instead: the articles ``el la los las un una unos unas`` and,
as MLQA's script does for Spanish, every Unicode punctuation character (so ``¿ ¡ « »`` go too). Reports say
which normalisation was used.
"""

from __future__ import annotations

import re
import string
import sys
import unicodedata
from collections import Counter

ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(el|la|los|las|un|una|unos|unas)\b",
}
_UNICODE_PUNCTUATION = {chr(i) for i in range(sys.maxunicode + 1) if unicodedata.category(chr(i)).startswith("P")}


def normalize_answer(text: str, articles: str = "en") -> str:
    text = text.lower()
    punctuation = set(string.punctuation) if articles == "en" else set(string.punctuation) | _UNICODE_PUNCTUATION
    text = "".join(ch for ch in text if ch not in punctuation)
    text = re.sub(ARTICLES[articles], " ", text)
    return " ".join(text.split())


def f1_score(prediction: str, gold: str, articles: str = "en") -> float:
    predicted_tokens = normalize_answer(prediction, articles).split()
    gold_tokens = normalize_answer(gold, articles).split()
    common = Counter(predicted_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(predicted_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, gold: str, articles: str = "en") -> float:
    return float(normalize_answer(prediction, articles) == normalize_answer(gold, articles))


def squad_scores(predictions: dict[str, str], golds: dict[str, list[str]], articles: str = "en") -> dict:
    """``{"f1", "exact_match"}`` (0-100) over the questions of ``golds``; a question without a prediction scores 0."""
    if articles not in ARTICLES:
        raise ValueError(f"articles must be one of {sorted(ARTICLES)}")
    f1 = exact = 0.0
    for qid, answers in golds.items():
        prediction = predictions.get(qid, "")
        f1 += max(f1_score(prediction, gold, articles) for gold in answers)
        exact += max(exact_match_score(prediction, gold, articles) for gold in answers)
    total = max(len(golds), 1)
    return {"f1": 100.0 * f1 / total, "exact_match": 100.0 * exact / total}
