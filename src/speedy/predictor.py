"""One model in one engine, answering a batch of inputs of its task type: what ``speedy predict`` runs on one
input and what ``speedy serve``'s batcher runs on many.

``open_predictor`` picks the implementation: the ONNX engines run in the torch-free runtime
(:class:`speedy.runtime.RuntimePredictor`: ONNX Runtime, tokenizers and numpy), the torch engine in PyTorch
(:class:`Predictor`). Both have ``task``, ``max_length``, ``run_each`` and ``run_batch``.
"""

from __future__ import annotations

from pathlib import Path

from speedy.runtime.fields import raise_first_input_error
from speedy.runtime.files import RUNTIME_ENGINES
from speedy.runtime.predictor import RuntimePredictor


def open_predictor(model_dir: str | Path, engine: str = "onnx-int8", threads: int | None = None,
                   max_tokens: int = 8192):
    """The model of ``model_dir`` in ``engine``; a broken folder or a missing file is one line naming it."""
    if engine in RUNTIME_ENGINES:
        return RuntimePredictor(model_dir, engine, threads, max_tokens)
    return Predictor(model_dir, engine, threads)


class Predictor:
    """The PyTorch model of a speedy folder (the ``torch`` engine), or any engine through ``load_engine``."""

    def __init__(self, model_dir: str | Path, engine: str = "torch", threads: int | None = None):
        # lazy: the torch engine only (these import torch and transformers; the ONNX engines never need them)
        from speedy.bench.engines import get_engine, load_engine
        from speedy.trained import check_model_folder

        needs_weights = get_engine(engine).needs_weights
        folder = check_model_folder(model_dir, need_weights=needs_weights)  # a broken folder: one line
        self.task, self.max_length, self.tokenizer = folder.task, folder.max_length, folder.tokenizer
        self.model = load_engine(model_dir, engine, threads)

    def run_batch(self, items: list) -> list:
        """The results of ``items`` (what the task's ``input_item`` makes: ``(text, pair)``, a word list, a
        ``(question, context)``...). Raises the ``InputError`` of the first input the model cannot take."""
        return raise_first_input_error(self.run_each(items))

    def run_each(self, items: list) -> list:
        """``run_batch``'s results, with an ``InputError`` in place of each input the model cannot take: one
        such input never fails the others (the server batches inputs of different requests together)."""
        import torch  # lazy: the torch engine only, as above

        with torch.inference_mode():
            return self.task.predict_items(self.model, self.tokenizer, items, self.max_length)
