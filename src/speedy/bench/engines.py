"""Inference engines, one class each, in the one registry that the benchmarks, ``speedy predict`` and ``speedy
serve`` all read: PyTorch eager fp32, ONNX Runtime fp32 and ONNX Runtime int8.

Every engine answers like the Hugging Face model (``logits``, or ``start_logits``/``end_logits``), so every task's
prediction, evaluation and timing code runs any engine unchanged. Adding one (OpenVINO, fp16 ONNX, ...) is one
subclass of :class:`Engine` and one entry in ``ENGINES``; nothing else names engines.

This module imports neither torch nor ``speedy.bench.export`` at its top (the CLI and the config check read the
registry's names only); the engines import the export code and the model folder checks (``speedy.trained``,
which import torch) when they run, and the export code never imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from speedy.errors import SpeedyError
from speedy.runtime.files import ONNX_FILES, ONNX_FOLDER


def _export():
    import speedy.bench.export  # lazy: start-up time (imports torch); `speedy --help` reads this registry

    return speedy.bench.export


def _trained():
    import speedy.trained  # lazy: start-up time (imports torch); `speedy --help` reads this registry

    return speedy.trained


class Engine:
    """One way to run the model of a speedy folder. The base class runs the PyTorch model itself.

    An engine that runs a file of its own sets ``file`` (its path in the model folder) and overrides ``write``
    (make the file from the PyTorch model), ``load`` and, when it needs extra libraries, ``require``."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""  # how tables and plots name it
    card: ClassVar[str] = ""  # what the model card of ``speedy export`` says of the engine's file
    file: str | None = None  # the engine's file in the model folder; None: it runs the PyTorch weights

    @property
    def needs_weights(self) -> bool:
        """Whether running (not only writing its file) needs the folder's PyTorch weights."""
        return self.file is None

    def path(self, folder: str | Path) -> Path | None:
        return Path(folder) / self.file if self.file is not None else None

    def ready(self, folder: str | Path) -> bool:
        """Whether ``folder`` holds what the engine runs."""
        return self.file is None or self.path(folder).is_file()

    def require(self) -> None:
        """A one-line error naming what to install, when a library the engine needs is missing."""

    def prepare(self, folder: str | Path, model=None) -> None:
        """Write what the engine runs into ``folder`` when it is missing, from ``model`` (default: the folder's
        PyTorch model, loaded)."""
        if self.ready(folder):
            return
        self.require()
        if model is None:
            model = _trained().load_torch_model(folder)
        self.write(model, Path(folder))

    def write(self, model, folder: Path) -> None:
        raise NotImplementedError(f"engine '{self.name}' does not say how to write {self.file}")

    def load(self, folder: str | Path, config, threads: int | None = None, model=None):
        """The folder's model in this engine, what it runs being there (``ready``). ``config``: the folder's
        checked ``config.json``; ``model``: the folder's PyTorch model when the caller has it loaded already."""
        if model is None:
            model = _trained().load_torch_model(folder)
        return model


class TorchEngine(Engine):
    """PyTorch eager fp32: the Hugging Face model as trained (on the GPU when the caller moves it there)."""

    name = "torch"
    title = "PyTorch fp32"
    card = "Hugging Face model and tokenizer (this folder)"


class OnnxEngine(Engine):
    """ONNX Runtime fp32: the graph of torch's exporter, fused by onnxruntime's transformer optimizer (the recipe
    and its measured reasons: ``speedy.bench.export``), which writes this engine's file and the int8 one at once."""

    name = "onnx"
    title = "ONNX Runtime fp32"
    card = "ONNX Runtime fp32, attention, LayerNorm and GELU fused"

    @property
    def file(self) -> str:  # the name the export writes (``runtime.ONNX_FILES``), kept in one place
        return f"{ONNX_FOLDER}/{ONNX_FILES[self.name]}"

    def require(self) -> None:
        _export().require_onnxruntime()

    def write(self, model, folder: Path) -> None:
        export = _export()
        export.export_onnx(model, folder / export.ONNX_FOLDER)

    def load(self, folder: str | Path, config, threads: int | None = None, model=None):
        return _export().OnnxModel(self.path(folder), config, threads)


class OnnxInt8Engine(OnnxEngine):
    """ONNX Runtime int8: the fused fp32 graph with int8 weights (dynamic quantization), written with it."""

    name = "onnx-int8"
    title = "ONNX Runtime int8"
    card = "the fused graph with int8 weights (dynamic quantization)"


# The registry: name -> engine class, in the order the tables and the model card list them.
ENGINES: dict[str, type[Engine]] = {engine.name: engine for engine in (TorchEngine, OnnxEngine, OnnxInt8Engine)}


def get_engine(name: str, setting: str = "--engine") -> Engine:
    """The engine called ``name``; a one-line error naming ``setting`` for an unknown one."""
    if name not in ENGINES:
        raise SpeedyError(f"{setting}: unknown engine '{name}' (allowed: {', '.join(ENGINES)})")
    return ENGINES[name]()


def check_engine(engine: str, setting: str = "--engine") -> str:
    get_engine(engine, setting)
    return engine


def load_engine(model_dir: str | Path, engine: str = "torch", threads: int | None = None,
                export_missing: bool = False, need_tokenizer: bool = True, model=None):
    """The model of a speedy folder in ``engine``; the engine's file is written first if ``export_missing``.
    The folder is checked first (``speedy.trained``): a broken one is one line naming the file at fault.
    ``model``: the folder's PyTorch model, when the caller has it loaded already."""
    chosen = get_engine(engine)
    model_dir = Path(model_dir)
    missing = not chosen.ready(model_dir)
    folder = _trained().check_model_folder(model_dir, need_tokenizer=need_tokenizer,
                                need_weights=chosen.needs_weights or (export_missing and missing))
    chosen.require()
    if missing:
        if not export_missing:
            raise SpeedyError(f"{chosen.path(model_dir)}: no such file: run 'speedy export {model_dir} OUT' and "
                              f"use OUT, or --engine torch")
        chosen.prepare(model_dir)
    return chosen.load(model_dir, folder.config, threads, model=model)
