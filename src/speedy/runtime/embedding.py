"""Sentence embeddings, served without torch: the unit vector of each text, mean-pooled over its tokens as the
distilled student was trained (``speedy.embed``), with e5's ``query: `` / ``passage: `` prefix chosen per input."""

from __future__ import annotations

import numpy as np

from speedy.runtime.base import RuntimeTask
from speedy.runtime.fields import InputError, InputField

DEFAULT_PREFIXES = {"query": "query: ", "passage": "passage: "}


class EmbeddingRuntime(RuntimeTask):
    type = "embedding"
    route, route_help = "/embed", "Embed each text as a unit vector (cosine similarity is the dot product)."
    inputs = {"text": InputField("The text."),
              "kind": InputField("query or passage: the prefix the model expects (default passage).", required=False)}
    results = {"embedding": list[float]}
    onnx_outputs = ("last_hidden_state",)
    fixed_labels = ("embedding",)  # no label set: the output is the vector

    def __init__(self, labels=None, info=None):
        super().__init__(list(self.fixed_labels), info)
        self.prefixes = dict(self.info.get("prefixes") or DEFAULT_PREFIXES)

    @staticmethod
    def input_item(fields: dict):
        return fields["text"], fields.get("kind") or "passage"

    def predict(self, runner, tokenizer, items, max_length):
        out: list = [None] * len(items)
        texts, rows = [], []
        for i, (text, kind) in enumerate(items):
            if kind not in self.prefixes:
                out[i] = InputError(f"kind: '{kind}' is not one of {', '.join(self.prefixes)}")
            else:
                texts.append(self.prefixes[kind] + text)
                rows.append(i)
        encodings = tokenizer.encode_batch(texts, max_length=max_length) if texts else []
        for i, outputs in zip(rows, runner.run(encodings) if encodings else []):
            vector = outputs["last_hidden_state"].astype(np.float32).mean(0)
            out[i] = {"embedding": (vector / max(float(np.linalg.norm(vector)), 1e-12)).tolist()}
        return out
