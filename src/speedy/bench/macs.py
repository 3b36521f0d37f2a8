"""Multiply-accumulates (MACs) of one forward pass at a given batch size and length.

Two counts, side by side:
- ``thop_macs``: exactly what THOP 0.1.1 (the paper's tool) counts for a transformer: every ``nn.Linear`` call
  (``in_features`` per output element) plus every ``nn.LayerNorm`` call (``2 * numel`` of its input, doubled when
  it has an affine weight and bias: THOP's ``count_normalization``). THOP has no rule for the attention products,
  which are plain ``matmul`` calls, not modules. With it the paper's own figures are reproduced to the unit
  (BETO at length 512: 43,526,457,600; ALBETO tiny: 2,418,245,608; see ``tests/test_measure.py``).
- ``macs``: the linear MACs plus the two attention products of every attention call, ``Q K^T`` and the weighted
  sum ``softmax(.) V``, each ``batch * heads * length * length * head_size``. They grow with the square of the
  length, so THOP's count undercounts most at length 512. LayerNorm, softmax and activations are not
  multiply-accumulates and are left out of it.

Both come from running the model once on random ids with forward hooks: a weight-shared ALBERT running its one
layer n times is counted n times, and whatever head the task puts on top is counted too. Embedding lookups are
counted by neither.
"""

from __future__ import annotations

import torch
from torch import nn

from speedy.bench.speed import random_inputs
from speedy.tasks import TASK_CLASSES


def attention_shape(module: nn.Module) -> tuple[int, int] | None:
    """``(heads, head size)`` of a self-attention module (BERT, RoBERTa, XLM-R, ALBERT, DistilBERT), else None."""
    head_size = getattr(module, "attention_head_size", None)
    heads = getattr(module, "num_attention_heads", None) or getattr(module, "n_heads", None)
    if isinstance(head_size, int) and isinstance(heads, int):
        return heads, head_size
    return None


@torch.inference_mode()
def count_macs(model: nn.Module, batch_size: int = 1, length: int = 128) -> dict:
    """MACs of ``model`` on a ``batch_size x length`` batch of random ids (no padding)."""
    linear = 0
    layer_norm = 0  # THOP's count_normalization, counted only in thop_macs
    attention = 0
    attention_calls = 0

    def on_linear(module, _inputs, output):
        nonlocal linear
        linear += module.in_features * output.numel()  # each output element: in_features multiply-adds

    def on_layer_norm(module, inputs, _output):
        nonlocal layer_norm
        layer_norm += 2 * inputs[0].numel() * (2 if module.elementwise_affine else 1)

    def on_attention(module, _inputs, _output):
        nonlocal attention, attention_calls
        heads, head_size = attention_shape(module)
        attention_calls += 1
        attention += 2 * batch_size * heads * length * length * head_size  # Q K^T, then weights x V

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(on_linear))
        elif isinstance(module, nn.LayerNorm):
            hooks.append(module.register_forward_hook(on_layer_norm))
        elif attention_shape(module) is not None:
            hooks.append(module.register_forward_hook(on_attention))
    if not any(attention_shape(m) for m in model.modules()):
        for hook in hooks:
            hook.remove()
        raise ValueError(f"count_macs: no attention module found in {type(model).__name__} (supported: BERT, "
                         "RoBERTa, XLM-R, ALBERT, DistilBERT)")
    was_training = model.training
    model.eval()
    try:
        model(**random_inputs(model.config.vocab_size, batch_size, length))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return {"macs": linear + attention, "thop_macs": linear + layer_norm, "linear_macs": linear,
            "attention_macs": attention,
            "attention_calls": attention_calls, "batch_size": batch_size, "length": length}


def encoder_macs(layers: int, hidden: int, ffn: int, embedding: int, length: int, batch_size: int = 1,
                 head: str = "classification", outputs: int = 2) -> int:
    """MACs of a BERT-like encoder from its shape alone (what :func:`count_macs` counts, without building it):
    per layer Q, K, V, output and the two feed-forward matrices per token plus ``Q K^T`` and ``A V``; ALBERT's
    embedding projection when ``embedding != hidden``; the head of the task type ``head``: ``outputs`` per label
    (or one per fixed output: QA's start and end), from every token for a ``per_token`` type (tagging, QA), else
    from the first token after the pooler (classification)."""
    task_class = TASK_CLASSES[head]
    outputs = len(task_class.fixed_labels) if task_class.fixed_labels else outputs
    tokens = batch_size * length
    per_layer = tokens * (4 * hidden * hidden + 2 * hidden * ffn) + 2 * batch_size * length * length * hidden
    projection = tokens * embedding * hidden if embedding != hidden else 0
    if task_class.per_token:
        top = tokens * hidden * outputs
    else:
        top = batch_size * hidden * hidden + batch_size * hidden * outputs
    return layers * per_layer + projection + top
