"""How texts are shown to an e5 model: a question as ``query: ...``, a paragraph as ``passage: ...`` (torch-free)."""

from __future__ import annotations

PREFIXES = {"query": "query: ", "passage": "passage: "}  # e5's own convention; "" for other models


def with_prefix(texts: list[str], kind: str, prefixes: dict | None = None) -> list[str]:
    """``texts`` as the model sees them: e5 embeds a question as ``query: ...`` and a paragraph as ``passage: ...``."""
    prefix = (PREFIXES if prefixes is None else prefixes).get(kind, "")
    return [prefix + text for text in texts]
