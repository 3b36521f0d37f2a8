"""A static (model2vec-style) student: one vector per vocabulary token, distilled from a transformer encoder.

:func:`token_vectors` runs every token alone through the encoder (``[CLS] token [SEP]``, the tokenizer's own
template) and keeps the output at the token's position; :func:`distill_static` reduces those vectors with PCA and
weighs tokens by their rank. A sentence is then the weighted mean of its tokens' vectors, L2-normalised: no
attention, no network, thousands of sentences a second on one core. Given real text, the token vectors can start
from the encoder's average states in it (:mod:`speedy.embed.context`) and take SIF's frequency weights and common
direction removal (:mod:`speedy.embed.sif`).

:class:`StaticEmbedder` loads and encodes with numpy and ``tokenizers`` alone (no torch, no transformers); its
folder holds ``vectors.npy``, ``weights.npy``, ``tokenizer.json`` and ``static.json`` (the settings).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from speedy.errors import SpeedyError

VECTORS, WEIGHTS, TOKENIZER, SETTINGS = "vectors.npy", "weights.npy", "tokenizer.json", "static.json"
WEIGHTINGS = ("sif", "zipf", "none")
POOLINGS = ("mean", "token")
PROBE = "hola"  # a text any tokenizer splits into ordinary tokens: shows where its template puts the special tokens


def _special_template(tokenizer) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer's own template puts before and after a single sequence
    (``[CLS]`` / ``[SEP]``, ``<s>`` / ``</s>``, or none)."""
    if hasattr(tokenizer, "build_inputs_with_special_tokens"):  # transformers 4 and slow tokenizers
        marker = -1
        ids = tokenizer.build_inputs_with_special_tokens([marker])
        return ids[: ids.index(marker)], ids[ids.index(marker) + 1 :]
    # transformers 5's tokenizers backend has no such method: find the bare probe inside the templated one.
    full = tokenizer(PROBE, add_special_tokens=True)["input_ids"]
    bare = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if bare and full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    raise SpeedyError(f"the tokenizer's special-token template could not be read (it turns '{PROBE}' into {full})")


def token_vectors(model_dir: str | Path, batch_size: int = 256, max_tokens: int | None = None,
                  prefix: str = "", pooling: str = "mean") -> tuple[np.ndarray, str]:
    """One vector per vocabulary id of the encoder in ``model_dir`` (a folder or a speedy model name), from its
    last hidden states when it runs ``[CLS] prefix token [SEP]`` (the tokenizer's template; ``prefix``, e.g. e5's
    ``"query: "``, is optional). ``pooling``: ``mean`` over every position, which is the sentence vector a
    mean-pooling encoder (e5, sentence-transformers) gives the token alone, and model2vec's choice; or ``token``,
    the token's own position. Special tokens get a zero vector. Returns ``(vectors [vocab, hidden] float32, path
    of the tokenizer.json)``; ``max_tokens`` keeps the first ``max_tokens`` ids only (for tests)."""
    # Lazy: loading and encoding a static model must import neither torch nor transformers.
    import torch
    from rich.progress import track
    from transformers import AutoModel

    from speedy.models.folder import load_tokenizer_folder, loading
    from speedy.models.registry import resolve

    if pooling not in POOLINGS:
        raise SpeedyError(f"token_vectors: unknown pooling '{pooling}' (allowed: {', '.join(POOLINGS)})")
    if batch_size < 1 or (max_tokens is not None and max_tokens < 1):
        raise SpeedyError(f"token_vectors: batch_size ({batch_size}) and max_tokens ({max_tokens}) must be positive")
    folder = Path(resolve(str(model_dir)))
    if not folder.is_dir():
        raise SpeedyError(f"{model_dir}: not a model folder")
    tokenizer = load_tokenizer_folder(folder)
    if not getattr(tokenizer, "is_fast", False):
        raise SpeedyError(f"model folder {folder}: a static model needs a fast tokenizer (tokenizer.json)")
    with loading(folder):
        model = AutoModel.from_pretrained(folder).eval()
    rows = min(len(tokenizer), model.get_input_embeddings().num_embeddings)
    vocab = rows if max_tokens is None else min(rows, max_tokens)
    before, after = _special_template(tokenizer)
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    position = len(before) + len(prefix_ids)  # where the token sits in every sequence
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(vocab) if i not in special]
    vectors = np.zeros((vocab, model.config.hidden_size), dtype=np.float32)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    batches = range(0, len(ids), batch_size)
    with torch.inference_mode():
        for start in track(batches, description=f"token vectors of {folder.name}", total=len(batches)):
            chunk = ids[start : start + batch_size]
            inputs = torch.tensor([before + prefix_ids + [i] + after for i in chunk], device=device)
            hidden = model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).last_hidden_state
            pooled = hidden.mean(dim=1) if pooling == "mean" else hidden[:, position]
            vectors[chunk] = pooled.float().cpu().numpy()
    return vectors, str(_tokenizer_json(folder, tokenizer))


def _tokenizer_json(folder: Path, tokenizer) -> Path:
    """The folder's ``tokenizer.json``, or the fast tokenizer written to a temporary folder when it has none
    (one made from ``sentencepiece.bpe.model`` and the like)."""
    if (folder / TOKENIZER).is_file():
        return folder / TOKENIZER
    path = Path(tempfile.mkdtemp(prefix="speedy-static-")) / TOKENIZER
    tokenizer.backend_tokenizer.save(str(path))
    return path


def zipf_weights(vocab: int) -> np.ndarray:
    """``log(1 + id)`` per vocabulary id, model2vec's Zipf weighting. It assumes the vocabulary is ordered by
    frequency, as BPE merges and trained WordPiece/Unigram vocabularies roughly are: a larger id is a rarer, more
    telling token and weighs more (id 0, a special token in every common vocabulary, weighs nothing)."""
    return np.log1p(np.arange(vocab, dtype=np.float64)).astype(np.float32)


def sif_weights(vocab: int, coefficient: float = 1e-4) -> np.ndarray:
    """SIF weights ``a / (a + p(id))`` (Arora et al., 2017) with ``p`` Zipf's law over the id taken as a frequency
    rank, as model2vec computes them: the hundreds of most frequent ids weigh little, the rest about 1 (where
    :func:`zipf_weights` keeps growing with the id)."""
    inverse_rank = 1 / np.arange(2, vocab + 2, dtype=np.float64)
    return (coefficient / (coefficient + inverse_rank / inverse_rank.sum())).astype(np.float32)


def model_name(model_dir) -> str:
    """What a saved static model records of its source: a Hub name as given; of a local folder, its name (where
    it lay on the machine that distilled it means nothing elsewhere, and would publish that machine's paths)."""
    path = Path(str(model_dir))
    return path.name if path.is_dir() else str(model_dir)


def distill_static(model_dir: str | Path, dims: int = 256, weighting: str = "sif", max_tokens: int | None = None,
                   prefix: str = "", batch_size: int = 256, pooling: str = "mean",
                   vectors: np.ndarray | None = None, tokenizer_path: str | None = None,
                   tune: SentenceTargets | None = None, context_texts: list[str] | None = None,
                   context_max_length: int = 256, remove_common: int = 0) -> StaticEmbedder:
    """A static embedder distilled from the encoder in ``model_dir``: :func:`token_vectors` (or ``vectors`` and
    ``tokenizer_path`` computed before); with ``context_texts`` (prefixed as the encoder reads them), each token
    those texts use takes its average state in them instead, and the others a map of theirs
    (:mod:`speedy.embed.context`); tuned on the teacher's sentence vectors when ``tune`` gives them
    (:func:`tune_vectors`), then with ``remove_common`` k > 0 the first k common directions of the sentence vectors
    of those texts (the context texts, else the tuning texts) removed from every token vector (SIF's second step,
    :mod:`speedy.embed.sif`), then PCA (scikit-learn) to ``dims`` when that is fewer than the encoder's width (fit on
    the non-special tokens; special tokens stay zero), then the token weights (``weighting``: ``sif``, ``zipf`` or
    ``none``; ``sif`` with ``context_texts`` takes each token's frequency from them,
    :func:`speedy.embed.sif.text_sif_weights`)."""
    if weighting not in WEIGHTINGS:
        raise SpeedyError(f"distill_static: unknown weighting '{weighting}' (allowed: {', '.join(WEIGHTINGS)})")
    if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
        raise SpeedyError(f"distill_static: dims must be a positive whole number, not {dims!r}")
    if isinstance(remove_common, bool) or not isinstance(remove_common, int) or remove_common < 0:
        raise SpeedyError(f"distill_static: remove_common must be a whole number >= 0, not {remove_common!r}")
    if remove_common and context_texts is None and tune is None:  # before any encoder pass, not after
        raise SpeedyError("distill_static: remove_common needs texts to find the common directions in (give "
                          "context_texts or tune)")
    if vectors is None or tokenizer_path is None:
        vectors, tokenizer_path = token_vectors(model_dir, batch_size=batch_size, max_tokens=max_tokens,
                                                prefix=prefix, pooling=pooling)
    weights = {"sif": sif_weights, "zipf": zipf_weights}.get(weighting, lambda n: np.ones(n, dtype=np.float32))(
        len(vectors))
    info = {"source_model": model_name(model_dir), "pooling": pooling, "weighting": weighting, "prefix": prefix}
    if context_texts is not None:
        from speedy.embed.context import context_sums, contextualise
        from speedy.embed.sif import text_sif_weights

        sums, counts = context_sums(model_dir, context_texts, len(vectors), max_length=context_max_length)
        vectors = contextualise(vectors, sums, counts)
        info["context"] = {"texts": len(context_texts), "tokens_seen": int(np.count_nonzero(counts))}
        if weighting == "sif":  # SIF's own p(token): its frequency in the texts, not the id taken as a rank
            weights = text_sif_weights(counts)
            info["context"]["sif"] = "token frequencies of the texts"
    if tune is not None:
        vectors, info["tuned"] = tune_vectors(vectors, weights, Tokenizer.from_file(tokenizer_path), tune)
    if remove_common:
        from speedy.embed.sif import common_directions, remove_directions

        texts = context_texts if context_texts is not None else tune.texts
        sentences = StaticEmbedder(vectors, weights, Tokenizer.from_file(tokenizer_path)).encode(list(texts))
        vectors = remove_directions(vectors, common_directions(sentences, remove_common))
        info["common_directions_removed"] = remove_common
    used = np.any(vectors != 0, axis=1)
    pca = dims < vectors.shape[1]
    if pca:
        if dims > used.sum():
            raise SpeedyError(f"distill_static: dims {dims} is more than the {int(used.sum())} token vectors PCA "
                              "is fitted on")
        from sklearn.decomposition import PCA  # lazy, as torch above: loading a static model needs no sklearn

        reduced = np.zeros((len(vectors), dims), dtype=np.float32)
        reduced[used] = PCA(n_components=dims, svd_solver="full").fit_transform(vectors[used])
        vectors = reduced
    return StaticEmbedder(vectors, weights, Tokenizer.from_file(tokenizer_path), info={**info, "pca": pca})


@dataclass
class SentenceTargets:
    """What :func:`tune_vectors` fits: ``texts`` and the teacher's unit vectors of them (``targets``, one row a
    text, the teacher's width), and held-out ones for early stopping, as the teacher read them (with its
    prefixes)."""

    texts: list[str]
    targets: np.ndarray
    val_texts: list[str]
    val_targets: np.ndarray
    epochs: int = 20
    learning_rate: float = 1e-3
    batch_size: int = 32
    patience: int = 3
    seed: int = 0


def tune_vectors(vectors: np.ndarray, weights: np.ndarray, tokenizer: Tokenizer,
                 fit: SentenceTargets) -> tuple[np.ndarray, dict]:
    """Token vectors moved so that each text's weighted mean points where the teacher's sentence vector does
    (cosine), on the teacher's cached vectors of real text: model2vec's "tokenlearn" idea, by gradient descent on
    the rows the texts use (the others keep their distilled vectors). Early stopping on the held-out texts keeps
    the best epoch. Returns the new vectors (a copy) and a summary (epochs run, held-out cosine before and
    after)."""
    import torch  # lazy: tuning needs the training install; loading a static model does not

    if not fit.texts or len(fit.texts) != len(fit.targets) or len(fit.val_texts) != len(fit.val_targets):
        raise SpeedyError(f"tune_vectors: {len(fit.texts)} texts and {len(fit.targets)} targets, "
                          f"{len(fit.val_texts)} held-out texts and {len(fit.val_targets)} targets: give as many "
                          "of each, and some texts")
    if len(fit.targets[0]) != vectors.shape[1]:
        raise SpeedyError(f"tune_vectors: targets of width {len(fit.targets[0])}, token vectors of "
                          f"{vectors.shape[1]}: tune before reducing the vectors")
    tokenizer = Tokenizer.from_str(tokenizer.to_str())
    tokenizer.no_padding()
    tokenizer.no_truncation()

    def token_ids(texts):
        return [[i for i in e.ids if i < len(vectors)] for e in tokenizer.encode_batch(texts, add_special_tokens=False)]

    train_ids, val_ids = token_ids(fit.texts), token_ids(fit.val_texts)
    # The rows the texts use (and id 0, so that texts of no known token still give a non-empty list).
    rows = np.unique(np.concatenate([np.asarray(ids, dtype=np.int64) for ids in train_ids + [[0]]]))
    local = {int(row): i for i, row in enumerate(rows)}
    torch.manual_seed(fit.seed)
    table = torch.nn.Parameter(torch.tensor(vectors[rows], dtype=torch.float32))
    row_weights = torch.tensor(weights[rows], dtype=torch.float32)
    optimizer = torch.optim.Adam([table], lr=fit.learning_rate)

    def pooled(batch_ids, rows_table, index, rows_weights):
        """The texts' weighted sums of token vectors (``index``: vocabulary id -> row of ``rows_table``)."""
        flat = torch.tensor([index[i] for ids in batch_ids for i in ids], dtype=torch.long)
        offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(ids) for ids in batch_ids])[:-1]]),
                               dtype=torch.long)
        return torch.nn.functional.embedding_bag(flat, rows_table, offsets, mode="sum",
                                                 per_sample_weights=rows_weights[flat])

    val_rows = np.unique(np.concatenate([np.asarray(ids, dtype=np.int64) for ids in val_ids + [[0]]]))
    val_local = {int(row): i for i, row in enumerate(val_rows)}
    tuned_in_val = [(val_local[int(row)], i) for i, row in enumerate(rows) if int(row) in val_local]
    val_weights = torch.tensor(weights[val_rows], dtype=torch.float32)
    val_targets = torch.tensor(np.asarray(fit.val_targets), dtype=torch.float32)

    def held_out_cosine() -> float:  # every token: the tuned rows from the table, the others as distilled
        with torch.no_grad():
            current = torch.tensor(vectors[val_rows], dtype=torch.float32)
            if tuned_in_val:
                where, which = map(list, zip(*tuned_in_val))
                current[where] = table[which]
            sums = pooled(val_ids, current, val_local, val_weights)
            return float(torch.nn.functional.cosine_similarity(sums, val_targets, dim=1).mean())

    targets = torch.tensor(np.asarray(fit.targets), dtype=torch.float32)
    order = np.random.default_rng(fit.seed).permutation
    start = best = held_out_cosine()
    best_table, since, epochs = table.detach().clone(), 0, 0
    for epoch in range(fit.epochs):
        for batch in np.array_split(order(len(train_ids)), max(1, len(train_ids) // fit.batch_size)):
            batch = [i for i in batch if train_ids[i]]
            if not batch:
                continue
            sums = pooled([train_ids[i] for i in batch], table, local, row_weights)
            loss = 1 - torch.nn.functional.cosine_similarity(sums, targets[batch], dim=1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epochs, score = epoch + 1, held_out_cosine()
        if score > best:
            best, best_table, since = score, table.detach().clone(), 0
        else:
            since += 1
            if since >= fit.patience:
                break
    tuned = vectors.copy()
    tuned[rows] = best_table.numpy()
    return tuned, {"texts": len(fit.texts), "tokens": int(len(rows)), "epochs_run": epochs,
                   "held_out_cosine": [round(start, 4), round(best, 4)]}


class StaticEmbedder:
    """Sentence embeddings as the weighted mean of token vectors, L2-normalised (numpy and ``tokenizers`` only).

    ``vectors`` is ``[vocab, dims]``, ``weights`` ``[vocab]``; ``tokenizer`` a ``tokenizers.Tokenizer`` whose ids
    index them. Ids past the vectors count as unknown, as do tokens whose vector is zero (special tokens)."""

    def __init__(self, vectors: np.ndarray, weights: np.ndarray, tokenizer: Tokenizer, info: dict | None = None):
        vectors = np.asarray(vectors, dtype=np.float32)
        weights = np.asarray(weights, dtype=np.float32)
        if vectors.ndim != 2 or weights.shape != (len(vectors),):
            raise SpeedyError(f"static embedder: vectors {vectors.shape} must be [vocab, dims] and weights "
                              f"{weights.shape} [vocab]")
        self.vectors, self.weights = vectors, weights
        self.weighted = vectors * weights[:, None]  # what encode sums
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())  # a copy: padding and truncation are switched off
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.info = dict(info or {})

    @property
    def dims(self) -> int:
        return self.vectors.shape[1]

    def encode(self, texts: list[str], batch_size: int = 1024) -> np.ndarray:
        """``[len(texts), dims]`` float32, each row L2-normalised (a zero row for a text with no known token).
        Tokenized without special tokens; each batch is summed in one ``np.add.reduceat``."""
        if isinstance(texts, str):
            raise SpeedyError("static embedder: encode takes a list of texts, not one string")
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            encodings = self.tokenizer.encode_batch(batch, add_special_tokens=False)
            ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
            ids = [row[row < len(self.vectors)] for row in ids]  # ids past the vectors: unknown
            lengths = np.array([len(row) for row in ids])
            nonempty = np.flatnonzero(lengths)
            if len(nonempty):
                starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[nonempty]
                # Segments of the texts with tokens; empty texts lie between them and add nothing.
                out[start + nonempty] = np.add.reduceat(self.weighted[np.concatenate(ids)], starts, axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)

    def save(self, folder: str | Path) -> Path:
        """Write ``vectors.npy`` (float16), ``weights.npy``, ``tokenizer.json`` and ``static.json`` to ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # float16 on disk: half the size (model2vec's), and the same retrieval scores (nDCG@10 61.40 both ways,
        # SQuAD-es validation, 384 dims); loading widens them to float32 again
        np.save(folder / VECTORS, self.vectors.astype(np.float16))
        np.save(folder / WEIGHTS, self.weights)
        self.tokenizer.save(str(folder / TOKENIZER))
        settings = {"dims": self.dims, "vocab": len(self.vectors), **self.info}
        (folder / SETTINGS).write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", "utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> StaticEmbedder:
        """A static embedder saved by :meth:`save`; a missing or broken file is one line naming it."""
        folder = Path(folder)
        for name in (VECTORS, WEIGHTS, TOKENIZER, SETTINGS):
            if not (folder / name).is_file():
                raise SpeedyError(f"static model {folder}: {name} missing (not a folder written by "
                                  "StaticEmbedder.save)")
        try:
            info = json.loads((folder / SETTINGS).read_text("utf-8"))
            vectors = np.load(folder / VECTORS, allow_pickle=False)
            weights = np.load(folder / WEIGHTS, allow_pickle=False)
            tokenizer = Tokenizer.from_file(str(folder / TOKENIZER))
        except Exception as error:  # noqa: BLE001 - json, numpy and tokenizers raise their own types: one line
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise SpeedyError(f"static model {folder}: cannot be loaded ({message})") from None
        if not isinstance(info, dict) or info.get("dims") != (vectors.shape[1] if vectors.ndim == 2 else None):
            raise SpeedyError(f"static model {folder}: {SETTINGS} does not match {VECTORS} {vectors.shape}")
        info = {key: value for key, value in info.items() if key not in ("dims", "vocab")}
        return cls(vectors, weights, tokenizer, info=info)
