"""One model in one engine, answering a batch of inputs of its task type: what ``speedy predict`` runs on one
input and what ``speedy serve``'s batcher runs on many."""

from __future__ import annotations

from pathlib import Path

import torch

from speedy.bench.engines import get_engine, load_engine
from speedy.tasks.base import InputError
from speedy.trained import check_model_folder


class Predictor:
    def __init__(self, model_dir: str | Path, engine: str = "onnx-int8", threads: int | None = None):
        needs_weights = get_engine(engine).needs_weights
        folder = check_model_folder(model_dir, need_weights=needs_weights)  # a broken folder: one line
        self.task, self.max_length, self.tokenizer = folder.task, folder.max_length, folder.tokenizer
        self.model = load_engine(model_dir, engine, threads)

    def run_batch(self, items: list) -> list:
        """The results of ``items`` (what the task's ``input_item`` makes: ``(text, pair)``, a word list, a
        ``(question, context)``...). Raises the ``InputError`` of the first input the model cannot take."""
        results = self.run_each(items)
        for result in results:
            if isinstance(result, InputError):
                raise result
        return results

    @torch.inference_mode()
    def run_each(self, items: list) -> list:
        """``run_batch``'s results, with an ``InputError`` in place of each input the model cannot take: one
        such input never fails the others (the server batches inputs of different requests together)."""
        return self.task.predict_items(self.model, self.tokenizer, items, self.max_length)
