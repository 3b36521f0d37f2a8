"""A study, as one YAML file: tasks and their data, candidate teachers and their grid, students, KD settings.

Every section is a dataclass whose field annotations say what each key may hold (type and range, checked by
pydantic). Reading and checking a file, values against the registries they name included: :func:`load_config` in
:mod:`speedy.configfile`. The defaults are the paper's (fine-tuning grid, KD settings, speed protocol).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, with_config


# ---------------------------------------------------------------- what each field may hold (checked by pydantic)
def _no_bool(value):
    if isinstance(value, bool):  # YAML's true/false are not numbers
        raise ValueError(f"expected a number, got {show(value)}")
    return value


def _as_list(value):
    return value if isinstance(value, list) else [value]


def _axis(values: list) -> list:
    if not values:
        raise ValueError("the grid has an empty axis")
    return values


def _bounds(values: list) -> list:
    if len(values) != 2 or values[0] > values[1]:
        raise ValueError(f"expected [low, high], got {show(values)}")
    return values


def _layers(value):
    """A number of layers n, or a list of layer indices to keep."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value >= 1:
            return value
    elif (isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
          and value == sorted(set(value)) and value[0] >= 0):
        return value
    raise ValueError(f"expected a number of layers >= 1 or a list of increasing layer indices >= 0, got {show(value)}")


T = TypeVar("T")
Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool)]
Count = Annotated[Int, Field(ge=0)]
Positive = Annotated[Int, Field(ge=1)]
Seed = Annotated[Int, Field(ge=0, lt=2**32)]  # numpy's seeds
Length = Annotated[Int, Field(ge=8)]  # tokens: room for the special tokens and some text
Rate = Annotated[Float, Field(gt=0)]
Fraction = Annotated[Float, Field(ge=0, le=1)]
Text = Annotated[str, Field(min_length=1)]
NonEmpty = Annotated[list[T], Field(min_length=1)]
Axis = Annotated[list[T], AfterValidator(_axis)]  # a grid axis: one value or more
OneOrAxis = Annotated[list[T], BeforeValidator(_as_list), AfterValidator(_axis)]  # a value or a grid axis
Bounds = Annotated[list[T], AfterValidator(_bounds)]  # [low, high]
Layers = Annotated[list[int] | int, BeforeValidator(_layers)]  # n layers, or the indices of the layers kept
ListOrNull = Annotated[list[T], BeforeValidator(lambda value: [] if value is None else value)]
Settings = with_config(ConfigDict(extra="forbid", allow_inf_nan=False, coerce_numbers_to_str=True))


@Settings
@dataclass
class DataSpec:
    """Where a task's examples come from: a named ``dataset`` of the paper (from the Hub, or from its native
    files in ``dir``), ``builtin`` (the demo's Bible), local ``files``, or the ``hub``."""

    dataset: str | None = None  # mldoc, pawsx-es, xnli-es, ancora-pos, conll2002-es, mlqa-es, sqac, tar-xquad
    dir: str | None = None  # the named dataset's folder of native files (default: the Hub)
    builtin: str | None = None  # "rv1909-genre"
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    format: str | None = None  # tsv | csv | jsonl; tagging: conll | conllu (default: from the suffix)
    tag_column: Int | None = None  # tagging: which column holds the tag (CoNLL: last; CoNLL-U: 3, UPOS)
    hub_tokens: str = "tokens"  # tagging on the Hub: the words' column
    hub_tags: str = "ner_tags"  # tagging on the Hub: the tags' column (universal_dependencies: upos)
    bad_answers: str = "fix"  # qa: answers whose answer_start misses their text: keep, drop, or fix
    columns: NonEmpty[str] | None = None  # for header-less TSV/CSV
    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    # embedding: what a query's and a passage's text start with (e5's prefixes; "" for a model without them)
    query_prefix: str = "query: "
    passage_prefix: str = "passage: "
    hub: str | None = None
    hub_config: str | None = None
    hub_splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "validation": "validation",
                                                                  "test": "test"})
    per_class: list[Positive] = field(default_factory=lambda: [300, 60, 150])  # builtin: train, validation, test
    seed: Seed = 0
    transfer: Count = 0  # builtin: this many other verses, without their genre, as unlabelled transfer text


@Settings
@dataclass
class TaskSpec:
    name: Text
    type: str = "classification"
    data: DataSpec = field(default_factory=DataSpec)
    max_length: Length = 128
    scheme: str = "bio"  # tagging: bio (NER, entity-level F1) or pos (every word its own tag)
    normalization: str = "en"  # qa: answer normalisation for F1/EM: en (official SQuAD v1.1) or es
    stride: Count = 64  # qa: tokens of overlap between the windows of a long context
    max_windows: Positive = 64  # qa: windows one example may need (caps what a huge context costs); more: error
    # Unlabelled text (one sentence or paragraph a line; tagging: words separated by spaces, as the gold files
    # split them) that the teacher labels with soft targets for KD students (see distill.transfer). It is also
    # part of the corpus a pruned vocabulary keeps, for teachers and students alike.
    transfer_files: ListOrNull[Text] = field(default_factory=list)


@Settings
@dataclass
class ModelSpec:
    """A model: a teacher candidate or a student. ``base`` is a registry name, a Hub id or a local folder."""

    name: Text
    base: Text | None = None  # default: name
    kind: str = "pretrained"  # pretrained | truncate (keep ``layers``) | albert-base-n (``layers`` = n)
    layers: Layers | None = None
    prune_vocab: bool = False  # keep only the sub-words the task's corpus uses
    learning_rate: Axis[Rate] | None = None  # overrides the grid's learning rates for this model
    kd: bool = True  # students: distil from the teacher
    # students: pretrained (the base's layers) or teacher (the selected teacher's own fine-tuned layers, head
    # and vocabulary: DistilBERT's initialisation; ``layers`` picks which, ``base`` is then unused)
    init: str = "pretrained"
    finetune: bool = False  # students: also train without KD (gold labels only), for comparison


@Settings
@dataclass
class Grid:
    """Stage 1's grid (the paper's: batch 16/32/64, epochs 2/3/4, learning rate 1e-5..5e-5)."""

    batch_size: Axis[Positive] = field(default_factory=lambda: [16, 32, 64])
    epochs: Axis[Positive] = field(default_factory=lambda: [2, 3, 4])
    learning_rate: Axis[Rate] = field(default_factory=lambda: [1e-5, 2e-5, 3e-5, 4e-5, 5e-5])
    seeds: NonEmpty[Seed] | None = None  # several seeds per grid point (default: the study's seed only)
    # how stage 2 picks: loss (the paper's: lowest validation loss) or metric (the task's validation metric,
    # which a run that diverged cannot win by a lucky loss)
    select_by: str = "loss"


@Settings
@dataclass
class DistillSettings:
    """Stage 3 (the paper's: KL, alpha 0, T 1; up to 50 epochs, patience 10; a grid over batch 16/32/64 and
    learning rate 5e-5/1e-4, the best point per student kept by its validation metric)."""

    loss: str = "kl"
    alpha: Fraction = 0.0
    temperature: Rate = 1.0
    epochs: Positive = 50
    patience: Positive | None = 10  # None: no early stopping
    batch_size: OneOrAxis[Positive] = field(default_factory=lambda: [16, 32, 64])
    learning_rate: OneOrAxis[Rate] = field(default_factory=lambda: [5e-5, 1e-4])
    warmup_ratio: Annotated[Float, Field(ge=0, lt=1)] = 0.1  # a share of all steps
    weight_decay: Annotated[Float, Field(ge=0)] = 0.01
    metric: str | None = None  # validation metric for early stopping (default: the task's: accuracy, f1)
    mixed_precision: str = "no"  # no | fp16 | bf16 (on GPUs; the Trainer, and so accelerate, applies it)
    # KD settings searched by Optuna's TPE instead of fixed: this many KD trials per student, each drawing the
    # loss, alpha and temperature (and a batch size and learning rate of the grid); 0 = the fixed settings above
    search_trials: Count = 0
    search_losses: NonEmpty[str] = field(default_factory=lambda: ["kl", "ce", "mse"])
    search_alpha: Bounds[Fraction] = field(default_factory=lambda: [0.0, 1.0])  # [low, high]
    search_temperature: Bounds[Rate] = field(default_factory=lambda: [1.0, 8.0])  # [low, high]
    # Beyond the paper (issue 14's levers; the defaults are the paper's method):
    seed: Seed | None = None  # the students' seed (default: the study's): several seeds against one teacher
    teachers: Positive = 1  # the top-k teacher candidates of stage 1 (by select_by); their KD terms are averaged
    teacher_weighting: str = "equal"  # equal | score: each teacher's terms weighted by its validation score
    transfer: bool = True  # KD students also train on the task's transfer text (transfer_files, data.transfer)
    hidden_weight: Annotated[Float, Field(ge=0)] = 0.0  # weight of hidden-state KD (0: off)
    hidden_loss: str = "mse"  # mse | cosine, through a learned projection when the widths differ
    # which student layer learns which teacher layer: uniform (student i of n <- teacher round(i*m/n)), last
    # (the last layers only), or explicit [[student layer, teacher layer], ...] (0 = the embeddings)
    hidden_layers: str | list[Annotated[list[Count], Field(min_length=2, max_length=2)]] = "uniform"
    # the rows hidden-state terms compare: task (the task's units: a word's first sub-token, an example's mean) or
    # tokens (every real token's state: many more targets a text; the student must tokenize as its teacher does,
    # as truncated students do; task types that list "tokens" in their KD signals)
    hidden_units: str = "task"
    relation_weight: Annotated[Float, Field(ge=0)] = 0.0  # similarity-relation KD of the last layers (0: off)
    # a student whose best model predicts one class on every validation example (a collapsed run) is trained
    # again from a new seed, up to this many times (a run one class at its first two epochs is stopped there); it
    # changes only such runs, so it is in no trial's key
    restarts: Count = 0


@Settings
@dataclass
class SpeedSettings:
    """The speed protocol: the paper's is batch 1, length 512, 10 warm-up runs, 100 measured."""

    batch_size: Positive = 1
    length: Length = 512
    warmup: Count = 10
    runs: Positive = 100
    threads: Positive | None = None  # default: all cores
    # torch (PyTorch eager fp32), onnx (ONNX Runtime fp32, fused), onnx-int8 (fused, then int8 weights);
    # the ONNX engines also score the test split, so the report shows what int8 costs.
    engines: NonEmpty[str] = field(default_factory=lambda: ["torch"])


@Settings
@dataclass
class StudyConfig:
    name: Text
    tasks: NonEmpty[TaskSpec]
    teachers: NonEmpty[ModelSpec]
    students: ListOrNull[ModelSpec] = field(default_factory=list)
    grid: Grid = field(default_factory=Grid)
    distill: DistillSettings = field(default_factory=DistillSettings)
    speed: SpeedSettings = field(default_factory=SpeedSettings)
    output_dir: Text = "runs/study"
    store: Text | None = None  # default: <output_dir>/store.sqlite
    seed: Seed = 42
    source: str | None = None  # the file it was read from

    @property
    def store_url(self) -> str:
        return self.store or str(Path(self.output_dir) / "store.sqlite")


def show(value) -> str:
    """A value as the YAML file wrote it, shortened."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
