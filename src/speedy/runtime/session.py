"""An exported ONNX graph in ONNX Runtime, fed with encodings and batched by tokens.

A model call takes rows of one length: padding costs as much as real tokens. ``OnnxRunner.run`` sorts the
encodings by length and cuts them into calls of at most ``max_tokens`` (rows times the longest row), so that
rows of similar length share a call, and returns each encoding's outputs trimmed to its own length, in the
order given.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from speedy.errors import SpeedyError


def require_onnxruntime():
    try:
        import onnxruntime  # lazy: optional (the onnx and serve extras)
    except ImportError:
        raise SpeedyError("the ONNX engines need onnxruntime, which is not installed: "
                          "pip install 'speedy[serve]' (or 'speedy[onnx]' beside the training install)") from None
    return onnxruntime


def open_session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session on ``path``, with every graph optimisation; a file that is missing or not a
    model is one line naming it."""
    ort = require_onnxruntime()
    if not path.is_file():
        raise SpeedyError(f"{path}: no such ONNX model (write it with 'speedy export')")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise SpeedyError(f"{path}: not a loadable ONNX model: {str(error).splitlines()[0]}") from None


def check_signature(session, path: Path, expected: dict, outputs: tuple[str, ...], num_labels: int) -> None:
    """The graph against its folder's ``config.json``: the signature stored at export, the output names of the
    task type and the number of labels."""
    stored = session.get_modelmeta().custom_metadata_map.get("speedy_config")
    if stored is not None:
        stored = json.loads(stored)
        differ = {k: (stored.get(k), v) for k, v in expected.items() if stored.get(k) != v}
        if differ:
            shown = "; ".join(f"{k}: {a} in the ONNX file, {b} in config.json" for k, (a, b) in differ.items())
            raise SpeedyError(f"{path}: does not match its config.json ({shown}): export it again")
    names = [o.name for o in session.get_outputs()]
    if names != list(outputs):
        raise SpeedyError(f"{path}: outputs {names}, but config.json describes a {expected.get('task')} model "
                          f"with outputs {list(outputs)}: export it again")
    if names == ["logits"]:
        width = session.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width != num_labels:
            raise SpeedyError(f"{path}: gives {width} labels, config.json has {num_labels}: export it again")


class OnnxRunner:
    def __init__(self, session, pad_id: int, type_ids: bool, max_tokens: int = 8192):
        self.session = session
        self.pad_id = pad_id
        self.type_ids = type_ids  # False: the model has one token type (XLM-R): always 0, as transformers feeds it
        self.max_tokens = max_tokens
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def calls(self, lengths: list[int]) -> list[list[int]]:
        """Indices of rows, longest first, cut into calls of at most ``max_tokens`` padded tokens."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        calls, current = [], []
        for i in order:
            longest = lengths[current[0]] if current else lengths[i]
            if current and (len(current) + 1) * longest > self.max_tokens:
                calls.append(current)
                current = []
            current.append(i)
        return calls + [current] if current else calls

    def feed(self, encodings: list) -> dict:
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            mask[row, :n] = 1
            if self.type_ids:
                types[row, :n] = encoding.type_ids
        given = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: given[name] for name in self.input_names}

    def run(self, encodings: list) -> list[dict[str, np.ndarray]]:
        """Each encoding's outputs (``{name: array}``; per-token outputs cut to its length), in order."""
        out: list = [None] * len(encodings)
        lengths = [len(e.ids) for e in encodings]
        for call in self.calls(lengths):
            values = self.session.run(self.output_names, self.feed([encodings[i] for i in call]))
            for row, i in enumerate(call):
                out[i] = {name: (value[row, : lengths[i]] if value.ndim == 3 or name != "logits" else value[row])
                          for name, value in zip(self.output_names, values)}
        return out
