"""A study, as one YAML file: tasks and their data, candidate teachers and their grid, students, KD settings.

Every section is a dataclass. :func:`load_config` checks the whole file before any work: pydantic checks each
key's type and range against the field annotations below (``1e-5``, a string to YAML 1.1, is read as a number),
then :func:`validate` checks the allowed values and how settings fit together. The first mistake stops it with
one line, ``study.yaml: tasks[1].type: unknown task type 'tagger' (allowed: classification, tagging, qa)``.
The defaults are the paper's (fine-tuning grid, KD settings, speed protocol).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, TypeVar

import yaml
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, with_config

from speedy.errors import SpeedyError

TASK_TYPES = ("classification", "tagging", "qa")
MODEL_KINDS = ("pretrained", "truncate", "albert-base-n")
SPLITS = ("train", "validation", "test")
# The validation metrics each task type reports (what distill.metric may name; "loss" for every type).
METRICS = {"classification": ("loss", "accuracy", "macro_f1"), "tagging": ("loss", "f1", "accuracy"),
           "qa": ("loss", "window_start_accuracy", "window_end_accuracy", "window_span_accuracy")}


# ---------------------------------------------------------------- what each field may hold (checked by pydantic)
def _no_bool(value):
    if isinstance(value, bool):  # YAML's true/false are not numbers
        raise ValueError(f"expected a number, got {_show(value)}")
    return value


def _as_list(value):
    return value if isinstance(value, list) else [value]


def _axis(values: list) -> list:
    if not values:
        raise ValueError("the grid has an empty axis")
    return values


def _bounds(values: list) -> list:
    if len(values) != 2 or values[0] > values[1]:
        raise ValueError(f"expected [low, high], got {_show(values)}")
    return values


def _layers(value):
    """A number of layers n, or a list of layer indices to keep."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value >= 1:
            return value
    elif (isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
          and value == sorted(set(value)) and value[0] >= 0):
        return value
    raise ValueError(f"expected a number of layers >= 1 or a list of increasing layer indices >= 0, got {_show(value)}")


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
    hub: str | None = None
    hub_config: str | None = None
    hub_splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "validation": "validation",
                                                                  "test": "test"})
    per_class: list[Positive] = field(default_factory=lambda: [300, 60, 150])  # builtin: train, validation, test
    seed: Seed = 0


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
    finetune: bool = False  # students: also train without KD (gold labels only), for comparison


@Settings
@dataclass
class Grid:
    """Stage 1's grid (the paper's: batch 16/32/64, epochs 2/3/4, learning rate 1e-5..5e-5)."""

    batch_size: Axis[Positive] = field(default_factory=lambda: [16, 32, 64])
    epochs: Axis[Positive] = field(default_factory=lambda: [2, 3, 4])
    learning_rate: Axis[Rate] = field(default_factory=lambda: [1e-5, 2e-5, 3e-5, 4e-5, 5e-5])


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


def _choice(key: str, what: str, value, allowed) -> None:
    if value not in allowed:
        raise SpeedyError(f"{key}: unknown {what}{' ' if what else ''}'{value}' (allowed: {', '.join(allowed)})")


def validate(config: StudyConfig) -> StudyConfig:
    """Check the allowed values and how the settings fit together (a field's type and range are checked when the
    file is read); a named dataset fills in its task's type, scheme and normalisation."""
    from speedy.bench.engines import check_engine
    from speedy.data.readers import FORMATS
    from speedy.data.squad import BAD_ANSWER_POLICIES
    from speedy.distill.losses import KD_KINDS

    for i, task in enumerate(config.tasks):
        key, data = f"tasks[{i}]", task.data
        _choice(f"{key}.type", "task type", task.type, TASK_TYPES)
        if data.dataset:
            _apply_dataset(task, i)
        elif not (data.builtin or data.train or data.hub):
            raise SpeedyError(f"{key}.data: give one of dataset, builtin, train/validation/test files, or hub")
        elif not (data.builtin or data.hub):
            for split in SPLITS:
                if not getattr(data, split):
                    raise SpeedyError(f"{key}.data.{split}: missing (local files: give train, validation and test)")
        if task.type == "tagging":
            _choice(f"{key}.scheme", "tagging scheme", task.scheme, ("bio", "pos"))
        if task.type == "qa":
            _choice(f"{key}.normalization", "normalisation", task.normalization, ("en", "es"))
        if data.builtin:
            _choice(f"{key}.data.builtin", "dataset", data.builtin, ("rv1909-genre",))
        if data.format is not None and task.type != "qa":
            formats = ("conll", "conllu") if task.type == "tagging" else FORMATS
            _choice(f"{key}.data.format", f"{task.type} file format", data.format, formats)
        _choice(f"{key}.data.bad_answers", "policy", data.bad_answers, BAD_ANSWER_POLICIES)
        unknown, missing = set(data.hub_splits) - set(SPLITS), set(SPLITS) - set(data.hub_splits)
        if unknown or missing:
            problem = "unknown split" if unknown else "missing"
            raise SpeedyError(f"{key}.data.hub_splits.{min(unknown or missing)}: {problem} (give the Hub's split "
                              f"for each of {', '.join(SPLITS)})")
        if len(data.per_class) != 3:
            raise SpeedyError(f"{key}.data.per_class: expected [train, validation, test], got {_show(data.per_class)}")
    for section in ("teachers", "students"):
        for i, spec in enumerate(getattr(config, section)):
            key = f"{section}[{i}]"
            _choice(f"{key}.kind", "kind", spec.kind, MODEL_KINDS)
            if spec.kind != "pretrained" and spec.layers is None:
                raise SpeedyError(f"{key}.layers: needed for kind '{spec.kind}'")
            if spec.kind == "pretrained" and spec.layers is not None:
                raise SpeedyError(f"{key}.layers: only for kind truncate or albert-base-n (this one is 'pretrained')")
            if spec.kind == "albert-base-n" and not isinstance(spec.layers, int):
                raise SpeedyError(f"{key}.layers: kind 'albert-base-n' runs one layer n times: give n, got "
                                  f"{_show(spec.layers)}")
            if section == "students" and not (spec.kd or spec.finetune):
                raise SpeedyError(f"{key}: kd and finetune are both false: nothing to train")
    _unique_names(config)
    distill = config.distill
    _choice("distill.loss", "KD loss", distill.loss, KD_KINDS)
    for i, loss in enumerate(distill.search_losses):
        _choice(f"distill.search_losses[{i}]", "KD loss", loss, KD_KINDS)
    _choice("distill.mixed_precision", "", distill.mixed_precision, ("no", "fp16", "bf16"))
    for task in config.tasks if distill.metric is not None else []:
        allowed = METRICS[task.type] + (("macro_f1",) if task.type == "tagging" and task.scheme == "pos" else ())
        if distill.metric not in allowed:
            raise SpeedyError(f"distill.metric: task '{task.name}' ({task.type}) has no validation metric "
                              f"'{distill.metric}' (allowed: {', '.join(allowed)})")
    for i, engine in enumerate(config.speed.engines):
        check_engine(engine, f"speed.engines[{i}]")
    return config


def _unique_names(config: StudyConfig) -> None:
    """Task names name folders and trials; model names name trials (teachers and students share one space)."""
    for keys in (["tasks"], ["teachers", "students"]):
        seen = {}
        for section in keys:
            for i, item in enumerate(getattr(config, section)):
                if item.name in seen:
                    raise SpeedyError(f"{section}[{i}].name: '{item.name}' is already the name of {seen[item.name]}")
                seen[item.name] = f"{section}[{i}]"


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


_STUDY = TypeAdapter(StudyConfig)
_SECTIONS = {"tasks": TaskSpec, "data": DataSpec, "teachers": ModelSpec, "students": ModelSpec, "grid": Grid,
             "distill": DistillSettings, "speed": SpeedSettings}
_EXPECTED = {"int": "an integer", "float": "a number", "finite": "a finite number", "bool": "true or false",
             "string": "a string", "list": "a list", "dict": "a mapping", "dataclass": "a mapping"}
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _show(value) -> str:
    """A value as the YAML file wrote it, shortened."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _where(error: dict) -> str:
    loc = error["loc"]
    if error["type"] == "invalid_key":  # the key itself, e.g. 3 in {3: x}
        loc = (*loc[:-1], str(loc[-1]))
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _problem(error: dict) -> str:
    kind, got = error["type"], _show(error.get("input"))
    if kind == "missing":
        return "missing required setting"
    if kind in ("unexpected_keyword_argument", "invalid_key"):
        section = StudyConfig
        for part in error["loc"][:-1]:
            section = _SECTIONS.get(part, section)
        return f"unknown setting (allowed: {', '.join(f.name for f in dataclasses.fields(section))})"
    if kind == "value_error":  # our own checks: the message says it all
        return str(error["ctx"]["error"])
    if kind in _BOUNDS:
        return f"must be {_BOUNDS[kind]} {next(iter(error['ctx'].values()))}, got {got}"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    if kind.split("_")[0] in _EXPECTED:
        return f"expected {_EXPECTED[kind.split('_')[0]]}, got {got}"
    return f"{error['msg'][0].lower()}{error['msg'][1:]}, got {got}"


def load_config(path: str | Path) -> StudyConfig:
    """Read and check a study's YAML file; any mistake is a :class:`SpeedyError` of one line,
    ``FILE: key.path: problem``, raised before any work."""
    path = Path(path)
    if not path.is_file():
        raise SpeedyError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text("utf-8"))
    except UnicodeDecodeError:
        raise SpeedyError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None)
        raise SpeedyError(f"{path}{line}: malformed YAML" + (f" ({problem})" if problem else "")) from None
    if data is None:
        raise SpeedyError(f"{path}: empty file (a study needs at least name, tasks and teachers)")
    if not isinstance(data, dict):
        raise SpeedyError(f"{path}: expected a mapping of settings (name, tasks, teachers, ...), got {_show(data)}")
    try:
        config = validate(_STUDY.validate_python(data))
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        raise SpeedyError(f"{path}: {_where(first)}: {_problem(first)}") from None
    except SpeedyError as error:
        raise SpeedyError(f"{path}: {error}") from None
    config.source = str(path)
    return config
