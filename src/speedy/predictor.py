"""One model in one engine, answering a batch of inputs of its task type: what ``speedy predict`` runs on one
input and what ``speedy serve``'s batcher runs on many."""

from __future__ import annotations

from pathlib import Path

import torch


class Predictor:
    def __init__(self, model_dir: str | Path, engine: str = "onnx-int8", threads: int | None = None):
        from transformers import AutoConfig, AutoTokenizer

        from speedy.bench.engines import load_engine
        from speedy.errors import SpeedyError
        from speedy.tasks import task_from_model

        if not (Path(model_dir) / "config.json").is_file():
            raise SpeedyError(f"{model_dir}: not a model folder (no config.json)")
        self.task, self.max_length = task_from_model(AutoConfig.from_pretrained(model_dir))
        self.model = load_engine(model_dir, engine, threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)

    @torch.inference_mode()
    def run_batch(self, items: list) -> list:
        """Classification: ``(text, pair)`` items; tagging: word lists; QA: ``(question, context)`` items."""
        if self.task.type == "tagging":
            sentences = [words for words in items if words]  # a text of only (Unicode) spaces has no word
            tags = iter(self.task.predict_words(self.model, self.tokenizer, sentences, self.max_length)
                        if sentences else [])
            return [{"words": words, "tags": next(tags) if words else []} for words in items]
        if self.task.type == "qa":
            from datasets import Dataset

            data = Dataset.from_dict({"question": [q for q, _ in items], "context": [c for _, c in items]})
            answers = self.task.predict_answers(self.model, self.tokenizer, data, self.max_length)
            empty = {"answer": None, "start": None, "end": None, "score": None}
            return [{"answer": a["text"], "start": a["start"], "end": a["end"], "score": a["score"]}
                    if (a := answers.get(i)) else empty for i in range(len(items))]
        texts = [text for text, _ in items]
        pairs = [pair for _, pair in items]
        if any(p is None for p in pairs) and any(p is not None for p in pairs):  # mixed: one call per kind
            out = [None] * len(items)
            for want_pair in (False, True):
                chosen = [i for i, p in enumerate(pairs) if (p is not None) == want_pair]
                for i, result in zip(chosen, self.run_batch([items[i] for i in chosen])):
                    out[i] = result
            return out
        inputs = self.tokenizer(texts, pairs if pairs[0] is not None else None, truncation=True,
                                max_length=self.max_length, padding=True, return_tensors="pt")
        probabilities = torch.softmax(self.model(**inputs).logits.float(), -1)
        results = []
        for row in probabilities:
            best = int(row.argmax())
            results.append({"label": self.task.labels[best], "score": float(row[best]),
                            "scores": {label: float(p) for label, p in zip(self.task.labels, row)}})
        return results
