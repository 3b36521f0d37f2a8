"""Static token vectors from real text: each token's vector is the encoder's average output state for it over
the contexts it occurs in.

A mean-pooling encoder (e5, sentence-transformers) makes a sentence's vector the mean of its tokens' output
states. A static model can only sum one fixed vector per token, so the fixed vector that best stands for a token's
state is its average state in real text: that is what :func:`context_sums` accumulates, in one pass of the
encoder over ``texts``. The token alone (``[CLS] token [SEP]``, :func:`speedy.embed.static.token_vectors`) is
a context it never meets in a sentence. Averaging contextual states into static vectors is the "aggregated"
reduction of Bommasani et al. (2020), "Interpreting Pretrained Contextualized Representations via Reductions to
Static Embeddings".

Tokens the texts never use keep a vector too: :func:`contextualise` maps their token-alone vectors by a ridge
regression fitted on the tokens seen (token-alone vector -> average state), so that they live in the same space
as the averaged ones.

The same texts tell each token's frequency, which SIF's weights want (:mod:`speedy.embed.sif`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from speedy.errors import SpeedyError

# the map's L2 penalty: the 385 x 385 normal equations are well posed with thousands of tokens; this only guards
RIDGE = 1e-2
COUNT_CAP = 20  # a token seen 20 times or more weighs as much as one seen 20 times in the map's fit


def context_sums(model_dir: str | Path, texts: list[str], vocab: int, batch_size: int = 32,
                 max_length: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One pass of the encoder in ``model_dir`` over ``texts`` (prefixed as the encoder reads them): per vocabulary
    id, the sum of its last-layer output states over every occurrence (``[vocab, hidden]`` float64) and how many
    occurrences there were (``[vocab]``). Special tokens and the texts' prefixes are counted too (the encoder's
    mean pooling counts them; their frequency makes SIF weigh them little); ids at or past ``vocab`` are skipped."""
    import torch  # lazy: a static model loads and encodes without torch
    from rich.progress import track
    from transformers import AutoModel

    from speedy.models.folder import load_tokenizer_folder, loading
    from speedy.models.registry import resolve

    if not texts:
        raise SpeedyError("context_texts: no texts to average the token states over")
    if batch_size < 1:
        raise SpeedyError(f"context_sums: batch_size must be positive, not {batch_size}")
    folder = Path(resolve(str(model_dir)))
    if not folder.is_dir():
        raise SpeedyError(f"{model_dir}: not a model folder")
    tokenizer = load_tokenizer_folder(folder)
    with loading(folder):
        model = AutoModel.from_pretrained(folder).eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    sums = np.zeros((vocab, model.config.hidden_size), dtype=np.float64)
    counts = np.zeros(vocab, dtype=np.int64)
    order = np.argsort([len(text) for text in texts], kind="stable")  # similar lengths together: less padding
    batches = range(0, len(order), batch_size)
    with torch.inference_mode():
        for start in track(batches, description=f"token states of {folder.name} in context", total=len(batches)):
            chunk = [texts[i] for i in order[start : start + batch_size]]
            inputs = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            states = model(input_ids=inputs["input_ids"].to(device),
                           attention_mask=inputs["attention_mask"].to(device)).last_hidden_state.cpu()
            real = inputs["attention_mask"].bool()  # padding adds nothing
            ids = inputs["input_ids"][real].numpy()
            keep = ids < vocab
            np.add.at(sums, ids[keep], states[real].double().numpy()[keep])
            np.add.at(counts, ids[keep], 1)
    return sums, counts


def contextualise(vectors: np.ndarray, sums: np.ndarray, counts: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """Token vectors (``[vocab, hidden]`` float32): a seen token's average state (``sums / counts``); an unseen
    token's token-alone vector (``vectors``) through the affine ridge map fitted from token-alone vectors to
    average states on the seen tokens (each weighing ``min(count, 20)`` in the squared error: a rare token's average
    is noisier). Zero rows of ``vectors`` (special tokens) stay zero."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if sums.shape != vectors.shape or counts.shape != (len(vectors),):
        raise SpeedyError(f"contextualise: sums {sums.shape} and counts {counts.shape} do not match the token "
                          f"vectors {vectors.shape}")
    special = ~np.any(vectors != 0, axis=1)
    seen = counts > 0
    fit = seen & ~special
    if fit.sum() <= vectors.shape[1]:
        raise SpeedyError(f"context_texts: they use {int(fit.sum())} distinct tokens; the map from token-alone "
                          f"vectors needs more than {vectors.shape[1]} (give more text)")
    mean = sums[seen] / counts[seen][:, None]
    inputs = np.hstack([vectors, np.ones((len(vectors), 1))])  # affine: a bias column
    sample = np.sqrt(np.minimum(counts[fit], COUNT_CAP))[:, None]
    x, y = inputs[fit] * sample, (sums[fit] / counts[fit][:, None]) * sample
    mapping = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y)
    out = inputs @ mapping
    out[seen] = mean
    out[special] = 0.0
    return out.astype(np.float32)

