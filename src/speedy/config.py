"""A study, as one YAML file: tasks and their data, candidate teachers and their grid, students, KD settings.

Every section is a dataclass; :func:`load_config` checks each key against the dataclass' fields, so a typo or
an unknown value fails at once, before any work, with the key and the allowed values named.
The defaults are the paper's (fine-tuning grid, KD settings, speed protocol).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from speedy.errors import SpeedyError

TASK_TYPES = ("classification", "tagging", "qa")
MODEL_KINDS = ("pretrained", "truncate", "albert-base-n")


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
    tag_column: int | None = None  # tagging: which column holds the tag (CoNLL: last; CoNLL-U: 3, UPOS)
    hub_tokens: str = "tokens"  # tagging on the Hub: the words' column
    hub_tags: str = "ner_tags"  # tagging on the Hub: the tags' column (universal_dependencies: upos)
    bad_answers: str = "fix"  # qa: answers whose answer_start misses their text: keep, drop, or fix
    columns: list[str] | None = None  # for header-less TSV/CSV
    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    hub: str | None = None
    hub_config: str | None = None
    hub_splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "validation": "validation",
                                                                  "test": "test"})
    per_class: list[int] = field(default_factory=lambda: [300, 60, 150])  # builtin: train, validation, test
    seed: int = 0


@dataclass
class TaskSpec:
    name: str
    type: str = "classification"
    data: DataSpec = field(default_factory=DataSpec)
    max_length: int = 128
    scheme: str = "bio"  # tagging: bio (NER, entity-level F1) or pos (every word its own tag)
    normalization: str = "en"  # qa: answer normalisation for F1/EM: en (official SQuAD v1.1) or es
    stride: int = 64  # qa: tokens of overlap between the windows of a long context


@dataclass
class ModelSpec:
    """A model: a teacher candidate or a student. ``base`` is a registry name, a Hub id or a local folder."""

    name: str
    base: str | None = None  # default: name
    kind: str = "pretrained"  # pretrained | truncate (keep ``layers``) | albert-base-n (``layers`` = n)
    layers: list[int] | int | None = None
    prune_vocab: bool = False  # keep only the sub-words the task's corpus uses
    learning_rate: list[float] | None = None  # overrides the grid's learning rates for this model
    kd: bool = True  # students: distil from the teacher
    finetune: bool = False  # students: also train without KD (gold labels only), for comparison


@dataclass
class Grid:
    """Stage 1's grid (the paper's: batch 16/32/64, epochs 2/3/4, learning rate 1e-5..5e-5)."""

    batch_size: list[int] = field(default_factory=lambda: [16, 32, 64])
    epochs: list[int] = field(default_factory=lambda: [2, 3, 4])
    learning_rate: list[float] = field(default_factory=lambda: [1e-5, 2e-5, 3e-5, 4e-5, 5e-5])


@dataclass
class DistillSettings:
    """Stage 3 (the paper's: KL, alpha 0, T 1; up to 50 epochs, patience 10; a grid over batch 16/32/64 and
    learning rate 5e-5/1e-4, the best point per student kept by its validation metric)."""

    loss: str = "kl"
    alpha: float = 0.0
    temperature: float = 1.0
    epochs: int = 50
    patience: int = 10
    batch_size: list[int] | int = field(default_factory=lambda: [16, 32, 64])
    learning_rate: list[float] | float = field(default_factory=lambda: [5e-5, 1e-4])
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    metric: str | None = None  # validation metric for early stopping (default: the task's: accuracy, f1)
    mixed_precision: str = "no"  # no | fp16 | bf16 (on GPUs; the Trainer, and so accelerate, applies it)
    # KD settings searched by Optuna's TPE instead of fixed: this many KD trials per student, each drawing the
    # loss, alpha and temperature (and a batch size and learning rate of the grid); 0 = the fixed settings above
    search_trials: int = 0
    search_losses: list[str] = field(default_factory=lambda: ["kl", "ce", "mse"])
    search_alpha: list[float] = field(default_factory=lambda: [0.0, 1.0])  # [low, high]
    search_temperature: list[float] = field(default_factory=lambda: [1.0, 8.0])  # [low, high]


@dataclass
class SpeedSettings:
    """The speed protocol: the paper's is batch 1, length 512, 10 warm-up runs, 100 measured."""

    batch_size: int = 1
    length: int = 512
    warmup: int = 10
    runs: int = 100
    threads: int | None = None  # default: all cores
    # torch (PyTorch eager fp32), onnx (ONNX Runtime fp32, fused), onnx-int8 (fused, then int8 weights);
    # the ONNX engines also score the test split, so the report shows what int8 costs.
    engines: list[str] = field(default_factory=lambda: ["torch"])


@dataclass
class StudyConfig:
    name: str
    tasks: list[TaskSpec]
    teachers: list[ModelSpec]
    students: list[ModelSpec] = field(default_factory=list)
    grid: Grid = field(default_factory=Grid)
    distill: DistillSettings = field(default_factory=DistillSettings)
    speed: SpeedSettings = field(default_factory=SpeedSettings)
    output_dir: str = "runs/study"
    store: str | None = None  # default: <output_dir>/store.sqlite
    seed: int = 42
    source: str | None = None  # the file it was read from

    @property
    def store_url(self) -> str:
        return self.store or str(Path(self.output_dir) / "store.sqlite")


def _build(cls, data: Any, key: str):
    """Build dataclass ``cls`` from a mapping, recursively, naming the offending key on any mistake."""
    if not isinstance(data, dict):
        raise SpeedyError(f"{key}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SpeedyError(f"{key}.{unknown[0]}: unknown setting (allowed: {', '.join(fields)})")
    kwargs = {}
    for name, value in data.items():
        sub = {"data": DataSpec, "grid": Grid, "distill": DistillSettings, "speed": SpeedSettings}.get(name)
        if name == "tasks":
            value = [_build(TaskSpec, item, f"{key}.tasks[{i}]") for i, item in enumerate(_as_list(value, name))]
        elif name in ("teachers", "students"):
            value = [_build(ModelSpec, item, f"{key}.{name}[{i}]") for i, item in enumerate(_as_list(value, name))]
        elif sub is not None:
            value = _build(sub, value, f"{key}.{name}")
        kwargs[name] = value
    missing = [f.name for f in fields.values()
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in kwargs]
    if missing:
        raise SpeedyError(f"{key}.{missing[0]}: missing required setting")
    return cls(**kwargs)


def _as_list(value, name):
    if value in (None, []) and name == "students":
        return []
    if not isinstance(value, list) or not value:
        raise SpeedyError(f"{name}: expected a non-empty list")
    return value


def validate(config: StudyConfig) -> StudyConfig:
    from speedy.distill.losses import KD_KINDS

    for i, task in enumerate(config.tasks):
        if task.type not in TASK_TYPES:
            raise SpeedyError(f"tasks[{i}].type: unknown task type '{task.type}' (allowed: {', '.join(TASK_TYPES)})")
        data = task.data
        if data.dataset:
            _apply_dataset(task, i)
        elif not (data.builtin or data.train or data.hub):
            raise SpeedyError(f"tasks[{i}].data: give one of dataset, builtin, train/validation/test files, or hub")
        if task.type == "tagging" and task.scheme not in ("bio", "pos"):
            raise SpeedyError(f"tasks[{i}].scheme: unknown tagging scheme '{task.scheme}' (allowed: bio, pos)")
        if task.type == "qa" and task.normalization not in ("en", "es"):
            raise SpeedyError(f"tasks[{i}].normalization: unknown normalisation '{task.normalization}' (allowed: en, es)")
        if data.builtin and data.builtin != "rv1909-genre":
            raise SpeedyError(f"tasks[{i}].data.builtin: unknown dataset '{data.builtin}' (allowed: rv1909-genre)")
    for section in ("teachers", "students"):
        for i, spec in enumerate(getattr(config, section)):
            if spec.kind not in MODEL_KINDS:
                raise SpeedyError(f"{section}[{i}].kind: unknown kind '{spec.kind}' (allowed: {', '.join(MODEL_KINDS)})")
            if spec.kind != "pretrained" and spec.layers is None:
                raise SpeedyError(f"{section}[{i}].layers: needed for kind '{spec.kind}'")
    for axis in ("batch_size", "epochs", "learning_rate"):
        if not getattr(config.grid, axis):
            raise SpeedyError(f"grid.{axis}: the grid has an empty axis")
    for axis in ("batch_size", "learning_rate"):
        value = getattr(config.distill, axis)
        value = list(value) if isinstance(value, (list, tuple)) else [value]
        if not value:
            raise SpeedyError(f"distill.{axis}: the grid has an empty axis")
        setattr(config.distill, axis, value)
    for i, loss in enumerate(config.distill.search_losses):
        if loss not in KD_KINDS:
            raise SpeedyError(f"distill.search_losses[{i}]: unknown KD loss '{loss}' (allowed: {', '.join(KD_KINDS)})")
    for name in ("search_alpha", "search_temperature"):
        bounds = getattr(config.distill, name)
        if len(bounds) != 2 or bounds[0] > bounds[1]:
            raise SpeedyError(f"distill.{name}: expected [low, high], got {bounds}")
    if config.distill.mixed_precision not in ("no", "fp16", "bf16"):
        raise SpeedyError(f"distill.mixed_precision: unknown '{config.distill.mixed_precision}' "
                          "(allowed: no, fp16, bf16)")
    from speedy.bench.engines import check_engine

    if not config.speed.engines:
        raise SpeedyError("speed.engines: empty list (allowed: torch, onnx, onnx-int8)")
    for i, engine in enumerate(config.speed.engines):
        check_engine(engine, f"speed.engines[{i}]")
    if config.distill.loss not in KD_KINDS:
        raise SpeedyError(f"distill.loss: unknown KD loss '{config.distill.loss}' (allowed: {', '.join(KD_KINDS)})")
    if not 0 <= config.distill.alpha <= 1:
        raise SpeedyError(f"distill.alpha: {config.distill.alpha} is outside [0, 1]")
    names = [spec.name for spec in config.teachers + config.students]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise SpeedyError(f"models: the name '{duplicate}' is used twice")
    return config


def _apply_dataset(task: TaskSpec, i: int) -> None:
    """A named dataset decides the task's type, tagging scheme and QA normalisation; a contradiction is an error."""
    from speedy.data.catalog import dataset_entry

    entry = dataset_entry(task.data.dataset, f"tasks[{i}].data.dataset")
    defaults = TaskSpec(name="")
    for setting in ("type", "scheme", "normalization"):
        given, wanted = getattr(task, setting), getattr(entry, setting)
        if setting != "type" and entry.type != {"scheme": "tagging", "normalization": "qa"}[setting]:
            continue
        if given != getattr(defaults, setting) and given != wanted:
            raise SpeedyError(f"tasks[{i}].{setting}: '{given}', but dataset '{entry.name}' needs '{wanted}'")
        setattr(task, setting, wanted)
    if task.data.dir is not None and not Path(task.data.dir).is_dir():
        raise SpeedyError(f"tasks[{i}].data.dir: {task.data.dir}: no such folder")


def load_config(path: str | Path) -> StudyConfig:
    path = Path(path)
    if not path.is_file():
        raise SpeedyError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text("utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise SpeedyError(f"{path}{line}: malformed YAML") from None
    config = validate(_build(StudyConfig, data or {}, "config"))
    config.source = str(path)
    return config
