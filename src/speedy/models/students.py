"""Student builders: ALBERT base-n, truncated encoders, and vocabulary pruning.

* **ALBERT base-n**: ALBERT shares one layer's weights across depth, so base-n is the same checkpoint run with
  ``num_hidden_layers = n``: the parameter count stays the same, compute grows linearly in n, and its output
  equals the full model's hidden state after layer n.
* **Truncation** (DistilBERT-style): a copy of an encoder without weight sharing (BERT, RoBERTa, XLM-R,
  DistilBERT) keeping a chosen list of its layers. This is how students are made from multilingual-e5-small.
* **Vocabulary pruning**: keep only the sub-words a task's corpus uses (plus special tokens and single Latin
  characters, so unseen words can still be spelled). Tokenization of the corpus is unchanged: Unigram's best
  segmentation and WordPiece's longest match only ever use pieces that are kept. A multilingual vocabulary of
  250k pieces shrinks to a few thousand, which shrinks the model and makes training much cheaper.
"""

from __future__ import annotations

import json

import torch
from tokenizers import Tokenizer
from torch import nn
from transformers import AutoConfig, PreTrainedTokenizerFast

from speedy.errors import SpeedyError


def albert_base_n(checkpoint: str, n: int, model_class, **kwargs):
    """Load an ALBERT checkpoint to run its shared layer ``n`` times."""
    config = AutoConfig.from_pretrained(checkpoint)
    if config.model_type != "albert":
        raise SpeedyError(f"students: albert-base-n needs an ALBERT checkpoint, '{checkpoint}' is {config.model_type}")
    if config.num_hidden_groups != 1:
        raise SpeedyError(f"students: '{checkpoint}' has {config.num_hidden_groups} layer groups; base-n needs 1")
    if not 1 <= n <= config.num_hidden_layers:
        raise SpeedyError(f"students.layers: {n} is outside 1..{config.num_hidden_layers}")
    return model_class.from_pretrained(checkpoint, num_hidden_layers=n, **kwargs)


def encoder_layers(model) -> nn.ModuleList:
    base = model.base_model
    if hasattr(base, "encoder") and hasattr(base.encoder, "layer"):
        return base.encoder.layer
    if hasattr(base, "transformer") and hasattr(base.transformer, "layer"):  # DistilBERT
        return base.transformer.layer
    raise SpeedyError(f"students: cannot truncate a {type(model).__name__} (no encoder.layer list)")


def truncate_layers(model, keep: list[int]):
    """Keep only the layers in ``keep`` (0-based, in order), in place; returns the model."""
    layers = encoder_layers(model)
    if not keep or sorted(set(keep)) != list(keep) or keep[0] < 0 or keep[-1] >= len(layers):
        raise SpeedyError(f"students.layers: {keep} must be increasing layer indices within 0..{len(layers) - 1}")
    kept = nn.ModuleList([layers[i] for i in keep])
    for new_index, layer in enumerate(kept):  # layers that know their index (for caches) must agree
        attention = getattr(getattr(layer, "attention", None), "self", None)
        if attention is not None and hasattr(attention, "layer_idx"):
            attention.layer_idx = new_index
    base = model.base_model
    if hasattr(base, "encoder") and hasattr(base.encoder, "layer"):
        base.encoder.layer = kept
    else:
        base.transformer.layer = kept
    for attr in ("num_hidden_layers", "n_layers"):
        if hasattr(model.config, attr):
            setattr(model.config, attr, len(keep))
    return model


def spread_layers(total: int, n: int) -> list[int]:
    """``n`` layer indices spread evenly over ``total``, always ending with the last layer."""
    step = total / n
    return sorted({min(total - 1, round(step * (i + 1)) - 1) for i in range(n)})


# ------------------------------------------------------------------------------------------- vocabulary


def _is_single_latin_char(piece: str) -> bool:
    core = piece.removeprefix("##").removeprefix("\u2581")
    return len(core) == 1 and ord(core) < 0x250


def used_token_ids(tokenizer, texts: list[str]) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    for start in range(0, len(texts), 1000):
        for row in tokenizer(texts[start : start + 1000], add_special_tokens=True)["input_ids"]:
            ids.update(row)
    return ids


def prune_vocabulary(model, tokenizer, texts: list[str]):
    """A smaller (model, tokenizer) pair that keeps only the sub-words ``texts`` use. Supports WordPiece and
    Unigram tokenizers (BERT, XLM-R, ALBERT); BPE would also need its merges rewritten and is refused."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    kind = state["model"]["type"]
    vocab = state["model"]["vocab"]
    if kind == "WordPiece":
        pieces = sorted(vocab, key=vocab.get)
    elif kind == "Unigram":
        pieces = [piece for piece, _ in vocab]
    else:
        raise SpeedyError(f"prune_vocab: {kind} tokenizers are not supported (WordPiece and Unigram are)")
    keep = used_token_ids(tokenizer, texts)
    keep |= {i for i, piece in enumerate(pieces) if _is_single_latin_char(piece)}
    keep |= {token["id"] for token in state.get("added_tokens", [])}
    old_ids = sorted(i for i in keep if i < len(pieces))
    new_id = {old: new for new, old in enumerate(old_ids)}

    if kind == "WordPiece":
        state["model"]["vocab"] = {pieces[old]: new for old, new in new_id.items()}
    else:
        state["model"]["vocab"] = [vocab[old] for old in old_ids]
        if state["model"].get("unk_id") is not None:
            state["model"]["unk_id"] = new_id[state["model"]["unk_id"]]
    for token in state.get("added_tokens", []):
        token["id"] = new_id[token["id"]]
    _remap_post_processor(state.get("post_processor"), new_id)
    backend = Tokenizer.from_str(json.dumps(state))
    special = {name: getattr(tokenizer, name) for name in
               ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
               if getattr(tokenizer, name, None) is not None}
    pruned_tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=tokenizer.model_max_length,
                                               model_input_names=list(tokenizer.model_input_names), **special)

    old_embeddings = model.get_input_embeddings()
    index = torch.tensor(old_ids, dtype=torch.long)
    new_embeddings = nn.Embedding(len(old_ids), old_embeddings.embedding_dim)
    with torch.no_grad():
        new_embeddings.weight.copy_(old_embeddings.weight[index])
    model.set_input_embeddings(new_embeddings)
    model.config.vocab_size = len(old_ids)
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        old = getattr(model.config, attr, None)
        if old is not None:
            setattr(model.config, attr, new_id.get(old, pruned_tokenizer.pad_token_id or 0))
    return model, pruned_tokenizer


def _remap_post_processor(processor: dict | None, new_id: dict[int, int]) -> None:
    if not processor:
        return
    kind = processor.get("type")
    if kind == "Sequence":
        for sub in processor.get("processors", []):
            _remap_post_processor(sub, new_id)
    elif kind == "TemplateProcessing":
        for token in processor.get("special_tokens", {}).values():
            token["ids"] = [new_id[i] for i in token["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for name in ("sep", "cls"):
            token, old = processor[name]
            processor[name] = [token, new_id[old]]
