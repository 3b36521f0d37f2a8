"""Inference engines behind one call shape: PyTorch eager fp32, ONNX Runtime fp32 and ONNX Runtime int8.

An ONNX Runtime engine is wrapped as a module that takes the tokenizer's tensors and returns the same output
object as the Hugging Face model (``logits``, or ``start_logits``/``end_logits``), so every task's prediction,
evaluation and timing code runs any engine unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import QuestionAnsweringModelOutput, SequenceClassifierOutput

from speedy.errors import SpeedyError

ENGINES = ("torch", "onnx", "onnx-int8")
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model-int8.onnx"}
ONNX_FOLDER = "onnx"


def require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise SpeedyError("the ONNX engines need onnxruntime, which is not installed: "
                          "pip install 'speedy[onnx]'") from None
    return onnxruntime


def check_engine(engine: str, setting: str = "--engine") -> str:
    if engine not in ENGINES:
        raise SpeedyError(f"{setting}: unknown engine '{engine}' (allowed: {', '.join(ENGINES)})")
    return engine


def config_signature(config) -> dict:
    """What an exported graph must agree with its ``config.json`` on (kept in the ONNX file's metadata)."""
    return {"model_type": config.model_type, "vocab_size": config.vocab_size,
            "hidden_size": getattr(config, "hidden_size", getattr(config, "dim", None)),
            "num_hidden_layers": getattr(config, "num_hidden_layers", getattr(config, "n_layers", None)),
            "num_labels": config.num_labels, "task": (getattr(config, "speedy_task", None) or {}).get("type")}


class OnnxModel(nn.Module):
    """An ONNX Runtime session that answers like the Hugging Face model it was exported from."""

    def __init__(self, path: str | Path, config, threads: int | None = None):
        super().__init__()
        ort = require_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise SpeedyError(f"{self.path}: no such ONNX model (write it with 'speedy export')")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise SpeedyError(f"{self.path}: not a loadable ONNX model: {str(error).splitlines()[0]}") from None
        self.config = config
        self.threads = threads or torch.get_num_threads()
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._check_matches_config()

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def _check_matches_config(self) -> None:
        stored = self.session.get_modelmeta().custom_metadata_map.get("speedy_config")
        expected = config_signature(self.config)
        if stored is not None:
            stored = json.loads(stored)
            differ = {k: (stored.get(k), v) for k, v in expected.items() if stored.get(k) != v}
            if differ:
                shown = "; ".join(f"{k}: {a} in the ONNX file, {b} in config.json" for k, (a, b) in differ.items())
                raise SpeedyError(f"{self.path}: does not match its config.json ({shown}): export it again")
        wanted = ["start_logits", "end_logits"] if expected["task"] == "qa" else ["logits"]
        if self.output_names != wanted:
            raise SpeedyError(f"{self.path}: outputs {self.output_names}, but config.json describes a "
                              f"{expected['task']} model with outputs {wanted}: export it again")
        if wanted == ["logits"]:
            width = self.session.get_outputs()[0].shape[-1]
            if isinstance(width, int) and width != self.config.num_labels:
                raise SpeedyError(f"{self.path}: gives {width} labels, config.json has {self.config.num_labels}: "
                                  "export it again")

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **_ignored):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if given["attention_mask"] is None:
            given["attention_mask"] = torch.ones_like(input_ids)
        if given["token_type_ids"] is None:
            given["token_type_ids"] = torch.zeros_like(input_ids)
        feed = {name: np.ascontiguousarray(given[name].cpu().numpy().astype(np.int64)) for name in self.input_names}
        outputs = [torch.from_numpy(o) for o in self.session.run(self.output_names, feed)]
        if self.output_names == ["start_logits", "end_logits"]:
            return QuestionAnsweringModelOutput(start_logits=outputs[0], end_logits=outputs[1])
        return SequenceClassifierOutput(logits=outputs[0])


def onnx_path(model_dir: str | Path, engine: str) -> Path:
    return Path(model_dir) / ONNX_FOLDER / ONNX_FILES[engine]


def load_engine(model_dir: str | Path, engine: str = "torch", threads: int | None = None,
                export_missing: bool = False, need_tokenizer: bool = True):
    """The model of a speedy folder in ``engine``; the ONNX files are written first if ``export_missing``.
    The folder is checked first (``speedy.models.folder``): a broken one is one line naming the file at fault."""
    from speedy.models.folder import check_model_folder, load_torch_model

    check_engine(engine)
    model_dir = Path(model_dir)
    path = onnx_path(model_dir, engine) if engine != "torch" else None
    folder = check_model_folder(model_dir, need_tokenizer=need_tokenizer,
                                need_weights=path is None or (export_missing and not path.is_file()))
    if engine == "torch":
        return load_torch_model(model_dir)
    require_onnxruntime()
    if not path.is_file():
        if not export_missing:
            raise SpeedyError(f"{path}: no such file: run 'speedy export {model_dir} OUT' and use OUT, "
                              f"or --engine torch")
        from speedy.bench.export import export_onnx

        export_onnx(load_torch_model(model_dir), model_dir / ONNX_FOLDER)
    return OnnxModel(path, folder.config, threads)
