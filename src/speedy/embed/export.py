"""An embedding student as an exported folder: its encoder in ONNX (fp32 fused, int8), served and predicted by
the torch-free runtime (``speedy serve OUT`` answers ``/embed``), and still a sentence-transformers folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from speedy.embed.files import saved_prefixes
from speedy.embed.text import PREFIXES
from speedy.errors import SpeedyError

ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def check_pooling(folder: Path) -> None:
    """The runtime pools as the student was trained only for Transformer -> mean Pooling -> Normalize."""
    try:
        modules = json.loads((folder / "modules.json").read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SpeedyError(f"{folder / 'modules.json'}: not readable ({error})") from None
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    if kinds != ["Transformer", "Pooling", "Normalize"]:
        raise SpeedyError(f"{folder / 'modules.json'}: modules {kinds}; the export serves Transformer, Pooling (mean), "
                          f"Normalize")
    pooling = next(m for m in modules if m["type"].endswith("Pooling"))
    path = folder / pooling["path"] / "config.json"
    try:
        settings = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SpeedyError(f"{path}: not readable ({str(error).splitlines()[0]})") from None
    modes = settings.get("pooling_mode")  # sentence-transformers 6: a list of names; before: one flag per mode
    modes = [modes] if isinstance(modes, str) else modes if modes is not None else \
        [k.removeprefix("pooling_mode_").removesuffix("_tokens") for k, v in settings.items()
         if k.startswith("pooling_mode_") and v is True]
    if list(modes) != ["mean"] or settings.get("include_prompt") is False:
        raise SpeedyError(f"{folder / pooling['path'] / 'config.json'}: only mean pooling is exported")


def export_embedding(model_dir: str | Path, out: str | Path, max_length: int | None = None) -> Path:
    """Write ``out`` (replaced atomically): the student's encoder and tokenizer with ``speedy_task`` (type
    ``embedding``, its length and prefixes), ``onnx/`` (fp32, int8) and the sentence-transformers files.
    ``max_length``: default, the folder's own (``sentence_bert_config.json``), so both paths cut texts alike."""
    from transformers import AutoModel, AutoTokenizer  # lazy: the training install

    from speedy.bench.export import export_onnx  # lazy: imports torch and the onnx extra
    from speedy.tasks.embedding import TokenStatesModel  # lazy: as above

    model_dir, out = Path(model_dir), Path(out)
    if not (model_dir / "modules.json").is_file():
        raise SpeedyError(f"model folder {model_dir}: no modules.json (a sentence-transformers folder, as "
                          f"speedy.embed saves its students)")
    check_pooling(model_dir)
    if max_length is None:
        try:
            max_length = json.loads((model_dir / "sentence_bert_config.json").read_text("utf-8"))["max_seq_length"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError):
            max_length = 256
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    # a study's model keeps its own prefixes; a speedy.embed student uses e5's
    prefixes = saved_prefixes(model_dir) or dict(PREFIXES)
    model.config.speedy_task = {"type": "embedding", "max_length": max_length, "prefixes": prefixes}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(tmp)
    export_onnx(TokenStatesModel(model).eval(), tmp / "onnx")
    for item in model_dir.iterdir():
        if item.name in ST_FILES:
            shutil.copy2(item, tmp / item.name)
        elif item.is_dir() and item.name[:1].isdigit():  # 1_Pooling, 2_Normalize
            shutil.copytree(item, tmp / item.name)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
