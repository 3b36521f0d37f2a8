"""The torch-free predictor: an exported folder's task, tokenizer and ONNX graph, answering a batch of inputs."""

from __future__ import annotations

import threading
from pathlib import Path

from speedy.errors import SpeedyError
from speedy.runtime.base import RuntimeTask
from speedy.runtime.classification import ClassificationRuntime
from speedy.runtime.embedding import EmbeddingRuntime
from speedy.runtime.fields import raise_first_input_error
from speedy.runtime.files import ONNX_FILES, ONNX_FOLDER
from speedy.runtime.folder import read_json, signature, task_info
from speedy.runtime.qa import QARuntime
from speedy.runtime.session import OnnxRunner, check_signature, open_session, require_onnxruntime
from speedy.runtime.tagging import TaggingRuntime
from speedy.runtime.tokenizer import FastTokenizer

# The task types servable without torch: name -> runtime class.
RUNTIME_TASKS: dict[str, type[RuntimeTask]] = {t.type: t for t in (ClassificationRuntime, TaggingRuntime, QARuntime,
                                                                 EmbeddingRuntime)}


class RuntimePredictor:
    """One exported model in ONNX Runtime: ``run_each`` answers a batch of its task's inputs (what the server's
    batcher calls), ``run_batch`` the same but raising the first ``InputError`` (what ``speedy predict`` calls).
    ``max_tokens``: the most padded tokens of one model call (see ``runtime.session``)."""

    def __init__(self, model_dir: str | Path, engine: str = "onnx-int8", threads: int | None = None,
                 max_tokens: int = 8192):
        if engine not in ONNX_FILES:
            raise SpeedyError(f"--engine: '{engine}' is not an ONNX engine (allowed: {', '.join(ONNX_FILES)})")
        require_onnxruntime()  # a missing library first: it is what the user must fix before anything else
        folder = Path(model_dir)
        if not folder.is_dir():
            raise SpeedyError(f"model folder {folder}: no such folder")
        raw = read_json(folder / "config.json")
        info, labels, self.max_length = task_info(folder / "config.json", raw, RUNTIME_TASKS)
        self.task = RUNTIME_TASKS[info["type"]](labels, info)
        self.tokenizer = FastTokenizer(folder)
        path = folder / ONNX_FOLDER / ONNX_FILES[engine]
        if not path.is_file():
            raise SpeedyError(f"{path}: no such file: run 'speedy export {folder} OUT' and serve OUT")
        session = open_session(path, threads)
        check_signature(session, path, signature(raw), self.task.onnx_outputs, len(labels))
        self.runner = OnnxRunner(session, self.tokenizer.pad_id, self.tokenizer.type_ids, max_tokens)
        self.engine, self.path = engine, path
        self.lock = threading.Lock()  # the tokenizer's truncation is set per call: one call at a time

    def run_each(self, items: list) -> list:
        with self.lock:
            return self.task.predict(self.runner, self.tokenizer, items, self.max_length)

    def run_batch(self, items: list) -> list:
        return raise_first_input_error(self.run_each(items))
