"""Sentence embeddings for semantic search: a student learns its teacher's sentence vectors (the paper's next
step, text similarity and search; issue 16), through the same stages, teacher cache, store and report as every
other type.

**Data.** Every row is one text with its prefix (e5's ``query: `` / ``passage: ``, the data settings
``query_prefix`` / ``passage_prefix``), its kind and its passage. Files:

* ``.txt``: unlabelled text, a passage a line (training: what the student learns the teacher's vectors on);
* ``.jsonl``: one ``{"query": ..., "passage": ...}`` a line (a question and the paragraph that answers it), or
  one of the two alone (an unpaired text of that kind);
* ``.json``: SQuAD v1.1 (every question -> its paragraph; answers are not read).

Validation and test need pairs: they are scored by retrieval. Each pair gives a query row followed by its passage
row, unless an earlier pair gave the same passage text (one passage, one row). Label ids: ``2 * g`` for a query whose gold passage is ``g``,
``2 * g + 1`` for passage ``g`` itself, -100 for a text of no pair.

**Model.** The encoder's token states averaged over the real tokens and L2-normalised (how multilingual-e5's
authors use it). That vector is the model's ``logits``, so the KD rows, the teacher cache, the Trainer's
predictions and evaluation are those of every other type; the saved folder is the plain encoder
(``AutoModel``), which sentence-transformers and the ONNX runtime's ``/embed`` read as they are.

**Teacher.** Used as it is: stage 1 evaluates it and trains nothing.

**KD.** One row per text, the teacher's vector; ``distill.loss`` mse or cosine. With ``distill.alpha`` > 0 the gold
term is the in-batch contrastive loss (below) on the training split's query/passage pairs (a training split without
pairs is an error). When the loss compares a batch's texts with each other (that gold term, or the relation term)
and the training split has pairs, each passage is batched with its queries and with passages the teacher finds alike
(:class:`PairBatchSampler`). Hidden-state terms take the mean of a layer's token states, as classification does, or
with ``distill.hidden_units: tokens`` every real token's state (``tokens.<layer>``: a text of n tokens gives n
targets instead of one, what the mean vector is made of; the student must tokenize as the teacher does, as truncated
e5 students do: the distill stage compares every training text's pieces before training,
:func:`speedy.distill.teacher.check_same_tokens`).

**Validation.** Loss: in-batch contrastive (InfoNCE at e5's temperature 0.05) of each query against the distinct
passages of its batch. Metrics: nDCG@10, MRR@10, recall@1 and @10 over all distinct passages of the split (exact
search; :mod:`speedy.tasks.retrieval_metric`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from torch.utils.data import Sampler
from transformers import AutoModel, DataCollatorWithPadding
from transformers.modeling_outputs import SequenceClassifierOutput

from speedy.data.squad import read_squad
from speedy.errors import SpeedyError, where
from speedy.runtime.embedding import DEFAULT_PREFIXES, EmbeddingRuntime
from speedy.runtime.fields import InputError
from speedy.tasks.base import MAX, Task, mean_over_tokens, predict, sequence_dataset, signal_tensor
from speedy.tasks.retrieval_metric import MEASURES, exact_search, retrieval_metrics, to_run

CONTRASTIVE_TEMPERATURE = 0.05  # multilingual-e5's (Wang et al., 2022)
NO_PAIR = -100


def pair_label(kind: str, group: int) -> int:
    """The label id of a text: ``2 * group`` for a query, ``2 * group + 1`` for its passage, -100 without pair."""
    if group < 0:
        return NO_PAIR
    return 2 * group + (kind == "passage")


class MeanPooledEncoder(nn.Module):
    """An encoder (``AutoModel``) whose ``logits`` are the unit-length mean of its token states over the real
    tokens. With ``labels`` (:func:`pair_label` ids) it also gives the in-batch contrastive loss. It saves and
    loads as the plain encoder, and reaches the encoder's layers and embeddings as a Hugging Face model with a
    head would (``base_model``, ``get_input_embeddings``), so truncation and vocabulary pruning work unchanged."""

    main_input_name = "input_ids"

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    @property
    def config(self):
        return self.encoder.config

    @property
    def base_model(self):
        return self.encoder

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def name_or_path(self) -> str:
        return getattr(self.encoder, "name_or_path", "")

    @property
    def onnx_module(self):
        """What the ONNX export writes: the encoder's token states, which the runtime (and ``OnnxModel``) pools."""
        return TokenStatesModel(self.encoder).eval()

    def get_input_embeddings(self):
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, embeddings):
        self.encoder.set_input_embeddings(embeddings)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=None, **kwargs):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        if attention_mask is None:
            inputs["attention_mask"] = attention_mask = torch.ones(input_ids.shape, device=input_ids.device)
        right_padded = bool(attention_mask[:, 0].all())  # each text's tokens first: a part can be cut short
        parts = None if output_hidden_states or not right_padded else length_parts(attention_mask.sum(-1))
        if parts is None:
            out = self.encoder(**inputs, output_hidden_states=output_hidden_states)
            states, hidden_states = mean_over_tokens(out.last_hidden_state, attention_mask), out.hidden_states
        else:  # short and long texts run apart, each padded to its own longest (what a pair batch mixes)
            states, hidden_states = torch.empty(len(input_ids), self.config.hidden_size), None
            for rows, length in parts:
                part = {name: value[rows, :length] for name, value in inputs.items()}
                out = self.encoder(**part)
                mean = mean_over_tokens(out.last_hidden_state, part["attention_mask"])
                states = states.to(mean.device, mean.dtype).index_copy(0, rows, mean)
        vectors = F.normalize(states, dim=-1)
        loss = in_batch_loss(vectors, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=vectors, hidden_states=hidden_states)

    def save_pretrained(self, path, **kwargs):
        self.encoder.save_pretrained(path, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path, **kwargs):
        for head_setting in ("num_labels", "id2label", "label2id"):  # what other types give their heads
            kwargs.pop(head_setting, None)
        if kwargs.get("output_loading_info"):
            encoder, info = AutoModel.from_pretrained(name_or_path, **kwargs)
            return cls(encoder), info
        return cls(AutoModel.from_pretrained(name_or_path, **kwargs))


def length_parts(lengths: torch.Tensor, least_saving: float = 0.25):
    """Two parts of a batch, ``[(rows, padded length), ...]`` (the shorter texts, then the longer), when running
    them apart pads at least ``least_saving`` fewer tokens than the batch padded whole; else ``None``. The cut is
    the one that pads least (a batch of passages with their short queries: the queries apart)."""
    n = len(lengths)
    if n < 2:
        return None
    ordered, rows = torch.sort(lengths)
    longest = int(ordered[-1])
    costs = [k * int(ordered[k - 1]) + (n - k) * longest for k in range(1, n)]
    k = min(range(len(costs)), key=costs.__getitem__) + 1
    if costs[k - 1] > (1 - least_saving) * n * longest:
        return None
    return [(rows[:k], int(ordered[k - 1])), (rows[k:], longest)]


class TokenStatesModel(nn.Module):
    """An encoder as a module whose one output is its token states, for the ONNX exporter (the bare Hugging Face
    model's keyword arguments confuse torch's tracer)."""

    def __init__(self, encoder):
        super().__init__()
        self.inner, self.config = encoder, encoder.config

    def set_attn_implementation(self, name):
        self.inner.set_attn_implementation(name)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                          use_cache=False).last_hidden_state


def in_batch_loss(vectors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """InfoNCE of each query against the distinct passages of the batch (its own passage the positive, the
    others negatives) at temperature 0.05; queries whose passage is not in the batch are left out, and a batch
    without a pair gives 0 (with the graph kept)."""
    queries, passages = _queries_and_passages(labels.tolist(), required=False)
    column = {group: i for i, group in enumerate(passages)}  # passage group -> its column of the scores
    queries = [(row, column[group]) for row, group in queries if group in column]
    if not queries:
        return vectors.sum() * 0.0
    rows, targets = zip(*queries)
    scores = vectors[list(rows)] @ vectors[list(passages.values())].T / CONTRASTIVE_TEMPERATURE
    return F.cross_entropy(scores, torch.tensor(targets, device=vectors.device))


def pair_batch_order(labels, lengths, batch_size: int, permutation, vectors=None) -> list[int]:
    """An order of training rows in which each passage and its queries (:func:`pair_label` ids) share a batch of
    ``batch_size`` rows, for losses that compare a batch's texts (the gold term, relation KD); ``permutation(n)``:
    a random order of ``range(n)``;
    ``vectors``: the teacher's vector of every row, or ``None``.

    Passage groups (a passage and its queries) are shuffled, or with ``vectors`` put in batches of passages the
    teacher finds alike (:func:`alike_first`: hard negatives for each other), and packed whole into batches,
    first fit: each batch takes every group, in that order, that still has room, and is topped up with unpaired
    rows (texts of no pair, or a pair missing one side); a group is split only when those have run out. The
    unpaired rows left make batches of their own, sorted by length within runs of 50 batches (as the Trainer's
    length-grouped sampler does, so they pad little). Whole batches are then shuffled; the last partial batch
    of groups, then that of unpaired rows, end the order."""
    groups: dict[int, list[int]] = {}
    for row, label in enumerate(labels):
        if label >= 0:
            groups.setdefault(label // 2, []).append(row)
    paired = [sorted(rows, key=lambda r: -(labels[r] % 2)) for rows in groups.values()  # passage first
              if {labels[r] % 2 for r in rows} == {0, 1}]
    in_pairs = {row for rows in paired for row in rows}
    single = [row for row in range(len(labels)) if row not in in_pairs]
    single = [single[i] for i in permutation(len(single))]
    pending = [paired[i] for i in permutation(len(paired))]
    if vectors is not None:
        pending = alike_first(pending, vectors, batch_size, permutation)
    batches = []
    while pending:
        batch, rest = [], []
        for rows in pending:  # first fit: every group that still has room, in the shuffled order
            (batch.extend if len(batch) + len(rows) <= batch_size else rest.append)(rows)
        while single and len(batch) < batch_size:
            batch.append(single.pop())
        if rest and len(batch) < batch_size:  # no unpaired row left to fill the room: split the next group
            room = batch_size - len(batch)
            batch, rest[0] = batch + rest[0][:room], rest[0][room:]
        batches.append(batch)
        pending = [rows for rows in rest if rows]
    megabatch = 50 * batch_size
    single = [row for start in range(0, len(single), megabatch)
              for row in sorted(single[start:start + megabatch], key=lambda r: -lengths[r])]
    batches += [single[start:start + batch_size] for start in range(0, len(single), batch_size)]
    full = [batch for batch in batches if len(batch) == batch_size]
    partial = [row for batch in batches if len(batch) < batch_size for row in batch]
    return [row for i in permutation(len(full)) for row in full[i]] + partial


def alike_first(groups: list[list[int]], vectors: torch.Tensor, batch_size: int, permutation) -> list[list[int]]:
    """``groups`` (each a passage row, then its query rows) reordered so that each run of about ``batch_size``
    rows holds passages the teacher finds alike: a group drawn at random, then the groups left whose passages
    are nearest to its passage (``vectors[row]``: the teacher's), as long as they fit. In-batch negatives drawn
    at random are too easy for retrieval among a corpus' similar passages; these are hard ones, as TAS-B
    (Hofstätter et al., 2021) composes its batches from clusters of alike texts."""
    keys = F.normalize(torch.as_tensor(vectors)[[rows[0] for rows in groups]].float(), dim=-1)
    left = torch.ones(len(groups), dtype=torch.bool)
    ordered = []
    for seed in permutation(len(groups)):  # every group is a seed unless an earlier one took it: none is lost
        if not left[seed]:
            continue
        left[seed] = False  # first, whatever its size (a group larger than a batch is split when packed)
        ordered.append(groups[seed])
        room = batch_size - len(groups[seed])
        if room < 2 or not left.any():  # a group is at least a passage and a query
            continue
        scores = (keys @ keys[seed]).masked_fill(~left, float("-inf"))
        for j in torch.topk(scores, min(int(left.sum()), 4 * batch_size)).indices.tolist():
            if len(groups[j]) <= room:
                ordered.append(groups[j])
                left[j] = False
                room -= len(groups[j])
            if room < 2:
                break
    return ordered


class PairBatchSampler(Sampler):
    """:func:`pair_batch_order` drawn anew every epoch from torch's global generator (which the Trainer seeds and
    restores on resume, as for its own length-grouped sampler)."""

    def __init__(self, labels, lengths, batch_size: int, vectors=None):
        self.labels, self.lengths, self.batch_size, self.vectors = list(labels), list(lengths), batch_size, vectors

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self):
        def permutation(n):
            return torch.randperm(n).tolist()
        return iter(pair_batch_order(self.labels, self.lengths, self.batch_size, permutation, self.vectors))


class EmbeddingTask(Task):
    type = "embedding"
    kd_signals = ("logits", "hidden", "tokens")  # hidden: the mean of an example's token states; tokens: each
    kd_losses = ("mse", "cosine")  # on unit vectors; a softmax over their dimensions (kl, ce) means nothing
    primary_metric = "ndcg@10"
    selection_metric = "ndcg@10"
    metrics = {name: MAX for name in MEASURES}
    teacher_as_is = True
    classifies = False  # a vector, not class scores: never "one class everywhere"
    fixed_labels = EmbeddingRuntime.fixed_labels  # no label set: the output is the vector
    head_architecture = "Model"  # the plain encoder: XLMRobertaModel, BertModel...
    per_token = True  # the exported graph gives the token states; the runtime pools them
    onnx_outputs = EmbeddingRuntime.onnx_outputs
    pipeline_tag = "sentence-similarity"
    runtime = EmbeddingRuntime  # the route, its inputs and results, and prediction without torch
    route, route_help, inputs, results = runtime.route, runtime.route_help, runtime.inputs, runtime.results
    input_item = staticmethod(runtime.input_item)

    def __init__(self, labels=None, prefixes: dict | None = None):
        super().__init__(list(self.fixed_labels))
        self.prefixes = dict(prefixes or DEFAULT_PREFIXES)

    @classmethod
    def from_settings(cls, labels, settings):
        data = settings.get("data")
        if data is not None:  # a config's TaskSpec: the data settings name the prefixes
            data = data if isinstance(data, dict) else vars(data)
            return cls(prefixes={"query": data.get("query_prefix", DEFAULT_PREFIXES["query"]),
                                 "passage": data.get("passage_prefix", DEFAULT_PREFIXES["passage"])})
        return cls(prefixes=settings.get("prefixes"))  # a saved model's describe()

    def read_options(self) -> dict:
        return {"query_prefix": self.prefixes["query"], "passage_prefix": self.prefixes["passage"]}

    def describe(self, max_length: int) -> dict:
        return super().describe(max_length) | {"prefixes": self.prefixes}

    def complete_folder(self, folder) -> None:
        """The sentence-transformers files (Transformer -> mean Pooling -> Normalize, and the prefixes as its
        ``query`` / ``passage`` prompts), so ``SentenceTransformer(folder)`` loads the model as it was trained."""
        from sentence_transformers import SentenceTransformer  # lazy: only when a model is saved
        from sentence_transformers.sentence_transformer import modules

        max_length = json.loads((Path(folder) / "config.json").read_text("utf-8"))["speedy_task"]["max_length"]
        transformer = modules.Transformer(str(folder), max_seq_length=max_length)
        model = SentenceTransformer(modules=[transformer, modules.Pooling(transformer.get_embedding_dimension(),
                                                                          pooling_mode="mean"), modules.Normalize()],
                                    prompts=dict(self.prefixes), device="cpu")
        model.save(str(folder))

    def model_class(self):
        return MeanPooledEncoder

    def load_model(self, name_or_path: str, **kwargs):
        return MeanPooledEncoder.from_pretrained(name_or_path, **kwargs)

    def row_dim(self, signal: str = "logits", teacher=None) -> int:
        if signal != "logits":
            return super().row_dim(signal, teacher)
        config = getattr(teacher, "config", None)
        return int(config.hidden_size) if config is not None else 0  # the vector: the encoder's width

    # ------------------------------------------------------------------ data
    @classmethod
    def read_file(cls, path, options, report=print):
        """``.txt`` (a passage a line), ``.jsonl`` (``{"query", "passage"}`` a line) or SQuAD ``.json``."""
        path = Path(path)
        prefixes = {"query": options.get("query_prefix", DEFAULT_PREFIXES["query"]),
                    "passage": options.get("passage_prefix", DEFAULT_PREFIXES["passage"])}
        kind = options.get("format") or path.suffix.lstrip(".").lower()
        if kind == "txt":
            rows = [("passage", text, -1, line) for line, text in _text_lines(path)]
        elif kind == "jsonl":
            rows = _rows(_jsonl_rows(path))
        elif kind == "json":
            squad = read_squad(path, require_answers=False, bad_answers="keep", report=lambda message: None)
            rows = _rows(zip(squad["question"], squad["context"], range(1, len(squad) + 1)))
        else:
            raise SpeedyError(f"{path}: an embedding task reads .txt (a passage a line), .jsonl "
                              f"({{\"query\", \"passage\"}} a line) or SQuAD .json, not '{kind or path.name}'")
        return Dataset.from_dict({"text": [prefixes[k] + text for k, text, _, _ in rows],
                                  "kind": [k for k, _, _, _ in rows], "group": [g for _, _, g, _ in rows],
                                  "line": [line for _, _, _, line in rows]})

    @classmethod
    def check_split(cls, name, split, source):
        if name != "train" and not any(group >= 0 for group in split["group"]):
            raise SpeedyError(f"{source}: no query/passage pairs: the {name} split of an embedding task is scored by "
                              f"retrieval (give .jsonl pairs or SQuAD .json)")

    @classmethod
    def load_hub(cls, name, config, split, columns):
        raise SpeedyError(f"{name}: an embedding task reads local files (data.train / validation / test); "
                          f"Hub datasets are not read for it")

    def unlabelled_rows(self, lines, columns):
        return [{"text": self.prefixes["passage"] + text, "kind": "passage", "group": -1, "line": number}
                for _, number, text in lines]

    def encode(self, dataset, tokenizer, max_length, with_index=False, source=""):
        encoded = tokenizer(list(dataset["text"]), truncation=True, max_length=max_length)
        labels = [pair_label(kind, group) for kind, group in zip(dataset["kind"], dataset["group"])]
        return sequence_dataset(encoded, labels, with_index)

    def collator(self, tokenizer):
        return DataCollatorWithPadding(tokenizer)

    def compute_metrics(self, predictions, label_ids) -> dict:
        """Retrieval of every query's passage among the split's distinct passages (exact inner-product search)."""
        vectors = np.asarray(predictions, dtype=np.float32)
        queries, passages = _queries_and_passages(label_ids)
        scores, indices = exact_search(vectors[[row for row, _ in queries]], vectors[list(passages.values())], 10)
        query_ids = [f"q{i}" for i in range(len(queries))]
        run = to_run(scores, indices, query_ids, [f"p{g}" for g in passages])
        qrels = {qid: {f"p{group}": 1} for qid, (_, group) in zip(query_ids, queries)}
        return retrieval_metrics(run, qrels)

    def gold_loss(self, rows, labels):
        """The in-batch contrastive loss of each query against the passages of its batch (its own the positive)."""
        if labels is None:
            raise SpeedyError("distill.alpha > 0 needs the pair labels of the batch, and it has none")
        return in_batch_loss(rows, labels)

    def check_gold(self, split, setting):
        labels = [pair_label(kind, group) for kind, group in zip(split["kind"], split["group"])]
        queries, passages = _queries_and_passages(labels, required=False)
        if not any(group in passages for _, group in queries):
            raise SpeedyError(f"{setting}: the training split has no query/passage pairs, so the gold term (each "
                              f"query against the passages of its batch) has nothing to learn from: give pairs "
                              f"(.jsonl or SQuAD .json) as data.train, or set it to 0")

    def train_sampler(self, dataset, batch_size, teacher=None):
        """Pairs batched together; with a teacher cache, each batch's passages are ones it finds alike. Without
        pairs (relation KD on unpaired text): the Trainer's own order."""
        if not any(label >= 0 and label % 2 == 1 for label in dataset["labels"]):
            return None
        vectors = teacher.rows(dataset["example_index"], "logits")[0] if teacher is not None else None
        return PairBatchSampler(dataset["labels"], [len(ids) for ids in dataset["input_ids"]], batch_size, vectors)

    # ------------------------------------------------------------------ prediction
    def predict_items(self, model, tokenizer, items, max_length):
        """Items: ``(text, kind)``; a result: the unit vector of the prefixed text."""
        out, texts, rows = [None] * len(items), [], []
        for i, (text, kind) in enumerate(items):
            if kind not in self.prefixes:
                out[i] = InputError(f"kind: '{kind}' is not one of {', '.join(self.prefixes)}")
                continue
            texts.append(self.prefixes[kind] + text)
            rows.append(i)
        if texts:
            inputs = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            inputs = {name: value.to(model.device) for name, value in inputs.items()}
            for i, vector in zip(rows, model(**inputs).logits.float().cpu().numpy()):
                out[i] = {"embedding": vector.tolist()}
        return out

    def predictions(self, model, tokenizer, dataset, max_length):
        """The passage each query of a split of pairs retrieves first (its group): what two engines must agree on
        (the vectors themselves differ in their last digits)."""
        vectors, labels = predict(model, tokenizer, self, self.encode(dataset, tokenizer, max_length))
        queries, passages = _queries_and_passages(labels)
        _, indices = exact_search(vectors[[row for row, _ in queries]], vectors[list(passages.values())], 1)
        groups = list(passages)
        return [groups[i] for i in indices[:, 0].tolist()]

    # ------------------------------------------------------------------ KD rows
    def _rows(self, outputs, attention_mask, signal: str):
        """``[batch, width]`` (the vector, or a layer's mean), or for ``tokens.<layer>`` ``[real tokens, width]``:
        each text's real tokens in order, texts one after the other."""
        values = signal_tensor(outputs, signal)
        if signal == "logits":
            return values
        if signal.startswith("tokens."):
            return values[attention_mask.bool()]
        return mean_over_tokens(values, attention_mask)

    def rows_per_example(self, dataset, signal: str = "logits", encoded=None) -> list[int]:
        if signal.startswith("tokens."):  # one per real token of the teacher's encoding
            return [int(sum(mask)) for mask in encoded["attention_mask"]]
        return super().rows_per_example(dataset, signal)

    def teacher_rows(self, outputs, batch, signal="logits"):
        mask = batch["attention_mask"].to(outputs.logits.device)
        rows = self._rows(outputs, mask, signal).detach().float().cpu().numpy()
        counts = mask.sum(-1).tolist() if signal.startswith("tokens.") else [1] * len(rows)
        for example, part in zip(batch["example_index"].tolist(), np.split(rows, np.cumsum(counts)[:-1])):
            yield example, np.arange(len(part), dtype=np.int64), part

    def kd_rows(self, outputs, inputs, extras, cache, signal="logits", student_signal=None):
        student = self._rows(outputs, inputs["attention_mask"], student_signal or signal)
        teacher, counts = cache.rows(extras["example_index"].tolist(), signal)
        if signal.startswith("tokens."):
            lengths = inputs["attention_mask"].sum(-1).tolist()
            for example, mine, theirs in zip(extras["example_index"].tolist(), lengths, counts):
                if mine != theirs:
                    raise SpeedyError(f"distill.hidden_units: tokens: text {example} is {mine} tokens for the "
                                      f"student and {theirs} for the teacher: token-level KD needs a student that "
                                      f"tokenizes as its teacher (a truncated one); use hidden_units: task")
        if signal == "logits" and student.shape[-1] != teacher.shape[-1]:
            raise SpeedyError(f"distill: the student's vectors have {student.shape[-1]} dimensions and the "
                              f"teacher's {teacher.shape[-1]}: an embedding student must be as wide as its teacher "
                              f"(truncate the teacher, or pick a student of its width)")
        labels = inputs.get("labels") if signal == "logits" else None  # pair labels, for the gold term
        return student, teacher.to(student.device), labels


def _queries_and_passages(label_ids, required: bool = True) -> tuple[list[tuple[int, int]], dict[int, int]]:
    """From label ids: ``(row, gold passage group)`` of each query, and the first row of each distinct passage
    group (in order of appearance); with ``required``, a split without both is an error (retrieval needs pairs)."""
    queries, passages = [], {}
    for row, label in enumerate(np.asarray(label_ids).tolist()):
        if label >= 0 and label % 2 == 1:
            passages.setdefault(label // 2, row)
        elif label >= 0:
            queries.append((row, label // 2))
    if required and (not queries or not passages):
        raise SpeedyError("embedding: the split has no query/passage pairs to score retrieval on (validation and test "
                          "need .jsonl pairs or SQuAD .json)")
    return queries, passages


def _read_text(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        raise SpeedyError(f"{path}: no such file") from None
    except OSError as error:
        raise SpeedyError(f"{path}: cannot read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise SpeedyError(f"{path}: not UTF-8 text (byte {error.start})") from None


def _text_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of every non-blank line (split at "\n" only, as transfer text is)."""
    lines = [(n, line.strip()) for n, line in enumerate(_read_text(path).split("\n"), 1) if line.strip()]
    if not lines:
        raise SpeedyError(f"{path}: no text (a passage a line)")
    return lines


def _jsonl_rows(path: Path):
    """``(query, passage, line)`` of each line of a JSON-lines file, either of them ``None`` for a line that gives
    one text only (unpaired); a malformed line is a one-line error naming it."""
    for number, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise SpeedyError(f"{where(path, number)}: not a JSON object ({error.msg})") from None
        texts = {k: row.get(k) for k in ("query", "passage")} if isinstance(row, dict) else {}
        given = {k: v for k, v in texts.items() if v is not None}
        if not given or not all(isinstance(v, str) and v.strip() for v in given.values()):
            raise SpeedyError(f"{where(path, number)}: expected {{\"query\": text, \"passage\": text}} (or one of "
                              f"them, for an unpaired text)")
        yield texts["query"], texts["passage"], number


def _rows(items) -> list[tuple[str, str, int, int]]:
    """``(kind, text, passage group, line)`` rows from ``(query, passage, line)`` items: a pair gives its query,
    then its passage unless an earlier pair gave the same text (equal passages are one passage, one group); a
    lone text is unpaired (group -1)."""
    groups: dict[str, int] = {}
    rows = []
    for query, passage, line in items:
        if query is None or passage is None:
            kind, text = ("query", query) if passage is None else ("passage", passage)
            rows.append((kind, text, -1, line))
            continue
        new = passage not in groups
        group = groups.setdefault(passage, len(groups))
        rows.append(("query", query, group, line))
        if new:
            rows.append(("passage", passage, group, line))
    return rows
