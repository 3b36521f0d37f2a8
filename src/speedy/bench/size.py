"""Parameter counts: total, and without the embedding matrices (which cost memory, not compute)."""

from __future__ import annotations


def count_parameters(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    embeddings = model.get_input_embeddings().weight.numel()
    layers = getattr(model.config, "num_hidden_layers", None)
    return {"parameters": total, "embedding_parameters": embeddings, "non_embedding_parameters": total - embeddings,
            "layers": layers, "vocab_size": getattr(model.config, "vocab_size", None)}
