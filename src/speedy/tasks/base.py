"""What every task type provides to the pipeline: its data, encoding, the model head, the metrics, KD rows and
its predictions. A type is one ``Task`` subclass that declares all of it, so the generic modules (config
checks, data loading, the server, ``speedy predict``, export, MACs, the model-folder checks) ask the class
found in the registry (``speedy.tasks.TASK_CLASSES``) and never branch on a type's name.

KD works on *rows*: a task decides what one distilled unit is (an example's logits for classification, a word
for tagging, a start/end distribution for QA). ``teacher_rows`` turns a teacher's batch output into rows placed
by their index within the example (what the teacher cache stores, independent of the student's tokenizer) and
``kd_rows`` pairs the student's rows with the cached teacher rows, so the KD loss and the trainer are shared.
``predict`` runs any engine's model over an encoded split in batches (what evaluation and the export checks score).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import ClassVar

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from speedy.errors import SpeedyError
from speedy.runtime.fields import InputError, InputField  # noqa: F401 - part of the task contract


MAX, MIN = "max", "min"
# The direction of the loss and of every validation metric a task type declares (``Task.metrics``, recorded as
# each class is defined): what ``lower_is_better`` reads, for selection, early stopping and the search alike.
DIRECTIONS: dict[str, str] = {"loss": MIN}


def lower_is_better(metric: str) -> bool:
    """Losses fall as a model improves, and so does any metric a task type declares ``MIN``; every other metric
    speedy selects on (accuracy, F1, exact match) rises."""
    return DIRECTIONS.get(metric) == MIN or metric.endswith("_loss")


def selection_score(val_metrics: dict, val_loss: float | None, metric: str) -> float:
    """A trial's validation ``metric``, signed so that higher is always better: a loss is negated. Grids, the
    TPE search and the report all keep the trial with the highest score, so none can keep the worst one."""
    if metric == "loss":
        return -float(val_loss if val_loss is not None else val_metrics["loss"])
    value = float(val_metrics[metric])
    return -value if lower_is_better(metric) else value


def device_of(model) -> torch.device:
    """Where a model's inputs must go (a PyTorch model's device; an ONNX Runtime engine says CPU)."""
    return getattr(model, "device", None) or torch.device("cpu")


# Pads KD rows of different widths: a logit whose probability underflows to exactly 0 in float32, and which the
# MSE loss recognises as padding (see speedy.distill.losses).
PAD_LOGIT = -1e4


# KD bookkeeping in batches (tagging: words; QA: context units), never passed to the model.
EXTRA_KEYS = ("example_index", "word_index", "unit_index", "unit_first", "unit_last", "unit_owned")


STATE_SIGNALS = ("hidden", "tokens")  # hidden.<layer>: at the task's units; tokens.<layer>: at every real token


def is_state_signal(signal: str) -> bool:
    """Whether a KD signal names a layer's hidden states (``hidden.<layer>``, ``tokens.<layer>``)."""
    return str(signal).partition(".")[0] in STATE_SIGNALS


def signal_tensor(outputs, signal: str) -> torch.Tensor:
    """The model output a KD signal names: ``logits``, or ``hidden.<layer>`` / ``tokens.<layer>`` (``[batch,
    tokens, width]``; layer 0 is the embeddings, layer i the i-th layer's output; the model must run with
    ``output_hidden_states``). The two state signals differ only in the rows a task takes from them."""
    if signal == "logits":
        return outputs.logits
    kind, _, layer = signal.partition(".")
    if kind in STATE_SIGNALS and layer.isdigit():
        states = getattr(outputs, "hidden_states", None)
        if states is None:
            raise SpeedyError(f"distill: signal '{signal}' needs the model run with output_hidden_states=True")
        if int(layer) >= len(states):
            raise SpeedyError(f"distill: signal '{signal}': the model has layers 0..{len(states) - 1} (0: embeddings)")
        return states[int(layer)]
    raise SpeedyError(f"distill: '{signal}' is not a KD signal (logits, hidden.<layer>, tokens.<layer>)")


def mean_over_tokens(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[batch, tokens, width]`` -> ``[batch, width]``: the mean over each sequence's real tokens (the mask's
    ones), which any tokenizer's sequence of a text agrees on, unlike its first token's state."""
    mask = attention_mask.to(values.dtype).unsqueeze(-1)
    return (values * mask).sum(1) / mask.sum(1).clamp(min=1)


def sequence_dataset(encoded, labels: list[int], with_index: bool = False) -> Dataset:
    """An encoded dataset of one sequence per example: the tokenizer's inputs, ``labels`` and, ``with_index``,
    each example's index (what the KD trainer finds its teacher rows by)."""
    columns = {name: encoded[name] for name in ("input_ids", "attention_mask", "token_type_ids") if name in encoded}
    columns["labels"] = labels
    if with_index:
        columns["example_index"] = list(range(len(labels)))
    return Dataset.from_dict(columns)


def gold_cross_entropy(rows: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of ``rows`` (``[rows, classes]``) against ``labels``, rows labelled -100 left out; a batch
    with no labelled row gives 0 with the graph kept (CE would be 0/0 = NaN: QA windows without the answer)."""
    if labels is None:
        raise SpeedyError("distill.alpha > 0 needs gold labels, and the batch has none")
    if bool((labels != -100).any()):
        return torch.nn.functional.cross_entropy(rows, labels, ignore_index=-100)
    return rows.sum() * 0.0


def needs_hidden_states(signals) -> bool:
    return any(is_state_signal(signal) for signal in signals)


class Task(ABC):
    """A task type. The class attributes without a value here must be declared by every type (a test checks the
    registered ones); the others have the default most types want."""

    type: ClassVar[str]
    # The KD signals its teacher_rows/kd_rows give: "logits" always; "hidden" = hidden.<layer> at the same units;
    # "tokens" = tokens.<layer>, a row per real token (students that tokenize as the teacher)
    kd_signals: ClassVar[tuple[str, ...]] = ("logits",)
    kd_losses: ClassVar[tuple[str, ...]] = ("kl", "ce", "mse")  # what distill.loss may name for this type
    # True: the teacher is used as it is, evaluated but never trained (stage 1 runs one point of 0 epochs), and
    # every student learns from it (none is fine-tuned alone; alpha > 0 adds the gold term): embeddings
    teacher_as_is: ClassVar[bool] = False
    primary_metric: ClassVar[str]  # the test metric reports compare (accuracy, F1)
    selection_metric: ClassVar[str]  # the validation metric that early stopping and the best checkpoint follow
    metrics: ClassVar[dict[str, str]]  # validation metrics compute_metrics reports ("loss" aside): name -> MAX/MIN
    # TaskSpec settings with a fixed set of values: name -> (what it is, allowed values); a named dataset sets them
    choices: ClassVar[dict[str, tuple[str, tuple[str, ...]]]] = {}
    file_formats: ClassVar[tuple[str, ...] | None] = None  # data.format values read_file takes (None: one format)
    fixed_labels: ClassVar[tuple[str, ...] | None] = None  # outputs that are not a label set of the data (QA)
    builtin_data: ClassVar[tuple[str, ...]] = ()  # the built-in datasets (data.builtin) of this type
    # Its predictions are scores over classes, so a run predicting one class everywhere (collapsed) can be told
    classifies: ClassVar[bool] = True
    # Its validation metrics need the predictions in the order of the encoded validation split (QA decodes each
    # window's span against the window's offsets), so the trainer validates in that order
    ordered_validation: ClassVar[bool] = False
    min_labels: ClassVar[int] = 1  # fewer labels in a model folder's id2label is an error
    head_architecture: ClassVar[str]  # how config.json's architectures name ends for this head
    per_token: ClassVar[bool] = False  # a head row per token (tagging, QA), not per sequence (the pooled first token)
    onnx_outputs: ClassVar[tuple[str, ...]] = ("logits",)  # the model outputs, as the ONNX graph names them
    pipeline_tag: ClassVar[str]  # the Hugging Face pipeline of the model card
    # The torch-free half of the type (a ``speedy.runtime`` class): served and run from ONNX without torch. A type
    # without one is served by the torch engine only. The four declarations below are usually taken from it.
    runtime: ClassVar[type | None] = None
    route: ClassVar[str]  # the server's route for this type, e.g. "/classify"
    route_help: ClassVar[str]  # what the route does, for its OpenAPI description
    inputs: ClassVar[dict[str, InputField]]  # the fields of one prediction input
    results: ClassVar[dict[str, object]]  # the fields of one prediction result: name -> type (str, float | None...)

    def __init_subclass__(cls, **kwargs):
        """Record the directions a new type declares: one rule (``lower_is_better``) serves every type, so two
        types giving one metric name opposite directions is an error."""
        super().__init_subclass__(**kwargs)
        for name, direction in vars(cls).get("metrics", {}).items():
            if direction not in (MAX, MIN) or DIRECTIONS.setdefault(name, direction) != direction:
                raise TypeError(f"{cls.__name__}.metrics: '{name}' is '{direction}', but must be '{MAX}' or '{MIN}' "
                                f"and agree with the other task types ('{DIRECTIONS.get(name)}')")

    def __init__(self, labels: list[str]):
        self.labels = list(labels)
        self.label2id = {label: i for i, label in enumerate(self.labels)}

    @classmethod
    def from_settings(cls, labels: list[str], settings: Mapping) -> Task:
        """A task from its settings: a config's ``TaskSpec`` (as a mapping) or the ``describe`` dict of a saved
        model. A type with settings reads its own."""
        return cls(labels)

    def complete_folder(self, folder) -> None:
        """Add to a saved model folder (model, tokenizer and ``speedy_task`` written) what else users of the type
        load it with: nothing for most types."""

    def read_options(self) -> dict:
        """Reader options (``read_file``'s) that this task's own settings imply, for a file scored by a saved
        model (``speedy evaluate --model``, ``speedy export --validation-file``): none for most types."""
        return {}

    def describe(self, max_length: int) -> dict:
        """What a saved model needs to be scored again: stored in its ``config.json`` as ``speedy_task``."""
        return {"type": self.type, "max_length": max_length}

    @classmethod
    def metric_names(cls, settings: Mapping) -> tuple[str, ...]:
        """The validation metrics of a task with ``settings``: what ``distill.metric`` may name."""
        return ("loss", *cls.metrics)

    # ------------------------------------------------------------------ data
    @classmethod
    @abstractmethod
    def read_file(cls, path, options: Mapping, report=print) -> Dataset:
        """One labelled file in this type's format. ``options``: reader settings named as ``DataSpec``'s
        (``format``, ``text``, ``label``...; a named dataset's own), any of them absent; ``report`` gets warnings
        about fixed-up examples."""

    @classmethod
    @abstractmethod
    def load_hub(cls, name: str, config: str | None, split: str, columns: Mapping) -> Dataset:
        """One split of a Hub dataset; ``columns`` names its columns as ``DataSpec``'s settings do."""

    @classmethod
    def check_split(cls, name: str, split: Dataset, source: str) -> None:
        """What a split (``train``, ``validation``, ``test``) read from ``source`` must hold beyond examples: a
        one-line error naming the file, before any training (a no-op for most types)."""

    @staticmethod
    def gold_labels(split: Dataset) -> Iterable[tuple[str, int]]:
        """Every gold label of a split with its line in the file: the label set is the training split's, and a
        label outside it is an error. Needed unless the type has ``fixed_labels``."""
        raise NotImplementedError

    def row_dim(self, signal: str = "logits", teacher=None) -> int:
        """Width of one KD row of ``signal`` (``logits``: one per class) from ``teacher`` (a later signal's width,
        a hidden state's, may be the teacher's). A signal this task's ``teacher_rows``/``kd_rows`` cannot give
        is an error."""
        if signal == "logits":
            return len(self.labels)
        kind, _, layer = signal.partition(".")
        if kind not in self.kd_signals or kind == "logits" or not layer.isdigit():
            raise SpeedyError(f"distill: a {self.type} task has no KD signal '{signal}' (it has: "
                              f"{', '.join(k if k == 'logits' else k + '.<layer>' for k in self.kd_signals)})")
        config = getattr(teacher, "config", None)
        if config is not None and int(layer) > config.num_hidden_layers:
            raise SpeedyError(f"distill: signal '{signal}': the teacher has layers 0..{config.num_hidden_layers} "
                              f"(0: embeddings)")
        return int(config.hidden_size) if config is not None else 0

    def unlabelled_rows(self, lines: list[tuple[str, int, str]], columns: list[str]) -> list[dict]:
        """Examples of the gold split's ``columns``, without gold labels, from lines of transfer text (``(file,
        line number, text)``): what the teacher labels for KD (see :mod:`speedy.data.transfer`)."""
        raise SpeedyError(f"{lines[0][0] if lines else 'transfer_files'}: a {self.type} task takes no transfer "
                          f"text (plain lines: classification of single texts and tagging; QA: JSON lines)")

    @abstractmethod
    def model_class(self):
        """The ``AutoModelFor...`` class of this task's head."""

    def load_model(self, name_or_path: str, **kwargs):
        return self.model_class().from_pretrained(
            name_or_path, num_labels=len(self.labels), id2label=dict(enumerate(self.labels)),
            label2id=self.label2id, **kwargs)

    def prepare(self, train_split) -> None:
        """Learn what the task needs from its training split before use (a no-op for most tasks)."""

    def rows_per_example(self, dataset, signal: str = "logits", encoded=None) -> list[int]:
        """How many KD rows of ``signal`` each example has (what the teacher cache stores per example);
        ``encoded``: the teacher's encoding of ``dataset``, for rows that depend on it (one per token)."""
        return [1] * len(dataset)

    @abstractmethod
    def encode(self, dataset: Dataset, tokenizer, max_length: int, with_index: bool = False, source: str = "") -> Dataset:
        """Model inputs and ``labels``; with the KD bookkeeping (``example_index``...) when ``with_index``.
        ``source`` names the file in error messages."""

    @abstractmethod
    def collator(self, tokenizer):
        """Pads a list of encoded examples into a batch."""

    @abstractmethod
    def compute_metrics(self, predictions: np.ndarray, label_ids: np.ndarray) -> dict:
        """Metrics from the model's logits and the gold label ids (the Trainer's validation)."""

    def validation_metrics(self, split: Dataset, tokenizer, max_length: int, source: str = ""):
        """The function ``(predictions, label_ids) -> metrics`` that scores each epoch's validation of ``split``
        (encoded by ``encode``): ``compute_metrics`` for a type whose metrics need only the predictions and gold
        labels; a type that needs more of the split (QA: the contexts, to decode spans) builds it here, once."""
        return self.compute_metrics

    def evaluate(self, model, tokenizer, dataset, max_length: int, source: str = "") -> dict:
        """Test metrics of ``model`` on a split."""
        logits, labels = predict(model, tokenizer, self, self.encode(dataset, tokenizer, max_length, source=source))
        return self.compute_metrics(logits, labels)

    # ------------------------------------------------------------------ prediction
    @abstractmethod
    def input_item(self, fields: dict):
        """What ``predict_items`` takes for one input, from its ``inputs`` fields (a request's, or the options of
        ``speedy predict``)."""

    @abstractmethod
    def predict_items(self, model, tokenizer, items: list, max_length: int) -> list:
        """One result (a dict of the ``results`` fields) per item, in order, or an ``InputError`` in place of an
        item the model cannot take: one bad input never fails the others it is batched with."""

    def check_result(self, result: dict) -> dict:
        """A result as ``speedy predict`` prints it; one that answers nothing is an error there (QA: no span)."""
        return result

    def predictions(self, model, tokenizer, dataset, max_length: int) -> list:
        """A flat list of what the model predicts on a labelled split (one label per example here), which the
        export compares across engines."""
        logits, _ = predict(model, tokenizer, self, self.encode(dataset, tokenizer, max_length))
        return list(logits.argmax(-1))

    @abstractmethod
    def teacher_rows(self, outputs, batch, signal: str = "logits") -> Iterable[tuple[int, np.ndarray, np.ndarray]]:
        """For each sequence of a teacher batch: ``(example index, row indices within the example, rows)`` of
        ``signal``."""

    def gold_loss(self, rows: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The gold term that ``distill.alpha`` mixes into KD, on the student's ``logits`` rows and their labels
        (``kd_rows``'): cross-entropy for most types (:func:`gold_cross_entropy`)."""
        return gold_cross_entropy(rows, labels)

    def check_gold(self, split: Dataset, setting: str) -> None:
        """That a training split holds what :meth:`gold_loss` learns from, when ``setting`` (``distill.alpha``)
        asks for it: a one-line error otherwise (a no-op for types whose every example is labelled)."""

    def train_sampler(self, dataset: Dataset, batch_size: int, teacher=None):
        """The order of training examples when the loss compares a batch's examples with each other (the gold
        term, relation KD) and the task wants to choose what shares a batch (embeddings: a query with its
        passage, alike passages together), or ``None``: the Trainer's own (shuffled, grouped by length).
        ``teacher``: the teacher cache of a KD run (its rows can tell which examples to batch together), else
        ``None``."""
        return None

    @abstractmethod
    def kd_rows(self, outputs, inputs, extras, cache, signal: str = "logits",
                student_signal: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The student's rows of ``student_signal`` (default: ``signal``; a hidden layer of the student may learn
        another layer of the teacher), the teacher's matching rows of ``signal`` from ``cache``, and the rows' gold
        labels (``None`` where the signal has no labels)."""


@torch.no_grad()
def predict(model, tokenizer, task: Task, encoded, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Logits and gold label ids for an encoded dataset, in order."""
    model.eval()
    loader = DataLoader(encoded, batch_size=batch_size, shuffle=False, collate_fn=task.collator(tokenizer))
    logits, labels = [], []
    for batch in loader:
        for name in EXTRA_KEYS:
            batch.pop(name, None)
        gold = batch.pop("labels")
        logits.append(model(**batch).logits.float().cpu().numpy())
        labels.append(gold.cpu().numpy())
    return np.concatenate(logits), np.concatenate(labels)
