"""Reading a study's YAML file: :func:`load_config`, the one way a config is read, checks the whole file before any
work. Pydantic checks each key's type and range against the field annotations of :mod:`speedy.config`
(``1e-5``, a string to YAML 1.1, is read as a number), then :func:`validate` checks the allowed values against the
registries they name (engines, datasets, KD losses, task types and what each type declares: its settings, file
formats and validation metrics) and how settings fit together. The first mistake
stops it with one line, ``study.yaml: tasks[1].type: unknown task type 'tagger' (allowed: classification, tagging,
qa)``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError

from speedy.bench.engines import check_engine
from speedy.config import (DataSpec, DistillSettings, Grid, ModelSpec, SpeedSettings, StudyConfig, TaskSpec,
                           show)
from speedy.data.catalog import dataset_entry
from speedy.data.squad import BAD_ANSWER_POLICIES
from speedy.distill.losses import LOGIT_KINDS
from speedy.errors import SpeedyError
from speedy.tasks import TASK_CLASSES

MODEL_KINDS = ("pretrained", "truncate", "albert-base-n")
SPLITS = ("train", "validation", "test")


def _choice(key: str, what: str, value, allowed) -> None:
    if value not in allowed:
        raise SpeedyError(f"{key}: unknown {what}{' ' if what else ''}'{value}' (allowed: {', '.join(allowed)})")


def validate(config: StudyConfig) -> StudyConfig:
    """Check the allowed values and how the settings fit together (a field's type and range are checked when the
    file is read); a named dataset fills in its task's type, scheme and normalisation."""
    for i, task in enumerate(config.tasks):
        key, data = f"tasks[{i}]", task.data
        _choice(f"{key}.type", "task type", task.type, TASK_CLASSES)
        if data.dataset:
            _apply_dataset(task, i)
        elif not (data.builtin or data.train or data.hub):
            raise SpeedyError(f"{key}.data: give one of dataset, builtin, train/validation/test files, or hub")
        elif not (data.builtin or data.hub):
            for split in SPLITS:
                if not getattr(data, split):
                    raise SpeedyError(f"{key}.data.{split}: missing (local files: give train, validation and test)")
        kind = TASK_CLASSES[task.type]
        for setting, (what, allowed) in kind.choices.items():
            _choice(f"{key}.{setting}", what, getattr(task, setting), allowed)
        if data.builtin and not kind.builtin_data:
            raise SpeedyError(f"{key}.data.builtin: task type '{task.type}' has no built-in dataset (give files)")
        if data.builtin:
            _choice(f"{key}.data.builtin", "dataset", data.builtin, kind.builtin_data)
        if data.format is not None and kind.file_formats is not None:
            _choice(f"{key}.data.format", f"{task.type} file format", data.format, kind.file_formats)
        _choice(f"{key}.data.bad_answers", "policy", data.bad_answers, BAD_ANSWER_POLICIES)
        unknown, missing = set(data.hub_splits) - set(SPLITS), set(SPLITS) - set(data.hub_splits)
        if unknown or missing:
            problem = "unknown split" if unknown else "missing"
            raise SpeedyError(f"{key}.data.hub_splits.{min(unknown or missing)}: {problem} (give the Hub's split "
                              f"for each of {', '.join(SPLITS)})")
        if data.transfer and not data.builtin:
            raise SpeedyError(f"{key}.data.transfer: only for builtin data (other text: give tasks[].transfer_files)")
        if len(data.per_class) != 3:
            raise SpeedyError(f"{key}.data.per_class: expected [train, validation, test], got {show(data.per_class)}")
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
                                  f"{show(spec.layers)}")
            if section == "students" and not (spec.kd or spec.finetune):
                raise SpeedyError(f"{key}: kd and finetune are both false: nothing to train")
    _unique_names(config)
    _check_kd_levers(config)
    distill = config.distill
    _choice("distill.loss", "KD loss", distill.loss, LOGIT_KINDS)
    for i, loss in enumerate(distill.search_losses):
        _choice(f"distill.search_losses[{i}]", "KD loss", loss, LOGIT_KINDS)
    _check_task_kd(config)
    _choice("distill.mixed_precision", "", distill.mixed_precision, ("no", "fp16", "bf16"))
    for task in config.tasks if distill.metric is not None else []:
        allowed = TASK_CLASSES[task.type].metric_names(vars(task))
        if distill.metric not in allowed:
            raise SpeedyError(f"distill.metric: task '{task.name}' ({task.type}) has no validation metric "
                              f"'{distill.metric}' (allowed: {', '.join(allowed)})")
    for i, engine in enumerate(config.speed.engines):
        check_engine(engine, f"speed.engines[{i}]")
    return config


HIDDEN_LOSSES = ("mse", "cosine")
HIDDEN_LAYER_MAPS = ("uniform", "last")


def _check_kd_levers(config: StudyConfig) -> None:
    """The settings beyond the paper's KD: teacher selection, student initialisation, hidden-state terms."""
    _choice("grid.select_by", "selection rule", config.grid.select_by, ("loss", "metric"))
    for i, spec in enumerate(config.students):
        _choice(f"students[{i}].init", "initialisation", spec.init, ("pretrained", "teacher"))
        if spec.init == "teacher" and spec.kind == "albert-base-n":
            raise SpeedyError(f"students[{i}].init: 'teacher' takes the teacher's layers: use kind truncate")
    distill = config.distill
    _choice("distill.hidden_loss", "hidden-state loss", distill.hidden_loss, HIDDEN_LOSSES)
    _choice("distill.teacher_weighting", "teacher weighting", distill.teacher_weighting, ("equal", "score"))
    if isinstance(distill.hidden_layers, str):
        _choice("distill.hidden_layers", "layer map", distill.hidden_layers, HIDDEN_LAYER_MAPS)
    _choice("distill.hidden_units", "hidden-state rows", distill.hidden_units, ("task", "tokens"))
    uses_hidden = distill.hidden_weight > 0 or distill.relation_weight > 0
    per_token = distill.hidden_weight > 0 and distill.hidden_units == "tokens"
    for task in config.tasks if uses_hidden else []:
        task_class = TASK_CLASSES.get(task.type)
        if task_class is not None and "hidden" not in task_class.kd_signals:
            raise SpeedyError(f"distill.hidden_weight/relation_weight: task '{task.name}' ({task.type}) has no "
                              f"hidden-state KD (its KD signals: {', '.join(task_class.kd_signals)})")
        if task_class is not None and per_token and "tokens" not in task_class.kd_signals:
            raise SpeedyError(f"distill.hidden_units: task '{task.name}' ({task.type}) has no token-level "
                              f"hidden-state KD (its KD signals: {', '.join(task_class.kd_signals)}): use 'task'")


def _check_task_kd(config: StudyConfig) -> None:
    """What each task type's KD can take: its losses, and for a type whose teacher is used as it is
    (embeddings) no student trained without it."""
    distill = config.distill
    for task in config.tasks:
        task_class = TASK_CLASSES[task.type]
        searched = distill.search_losses if distill.search_trials > 0 else []
        for key, loss in [("distill.loss", distill.loss)] + [(f"distill.search_losses[{i}]", loss)
                                                             for i, loss in enumerate(searched)]:
            if loss not in task_class.kd_losses:
                raise SpeedyError(f"{key}: task '{task.name}' ({task.type}) takes the KD losses "
                                  f"{', '.join(task_class.kd_losses)}, not '{loss}'")
        if not task_class.teacher_as_is:
            continue
        for i, student in enumerate(config.students):
            if not student.kd:  # finetune: true is skipped for such a task (see trials.student_modes)
                raise SpeedyError(f"students[{i}].kd: task '{task.name}' ({task.type}) trains no student "
                                  f"without its teacher: its students learn from the teacher (and, with "
                                  f"distill.alpha > 0, from the training pairs too)")


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
    """A named dataset decides the task's type and its type's ``choices`` (tagging scheme, QA normalisation); a
    contradiction is an error."""
    entry = dataset_entry(task.data.dataset, f"tasks[{i}].data.dataset")
    defaults = TaskSpec(name="")
    for setting in ("type", *TASK_CLASSES[entry.type].choices):
        given, wanted = getattr(task, setting), getattr(entry, setting)
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


def _where(error: dict) -> str:
    loc = error["loc"]
    if error["type"] == "invalid_key":  # the key itself, e.g. 3 in {3: x}
        loc = (*loc[:-1], str(loc[-1]))
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _problem(error: dict) -> str:
    kind, got = error["type"], show(error.get("input"))
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
        raise SpeedyError(f"{path}: expected a mapping of settings (name, tasks, teachers, ...), got {show(data)}")
    try:
        config = validate(_STUDY.validate_python(data))
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        raise SpeedyError(f"{path}: {_where(first)}: {_problem(first)}") from None
    except SpeedyError as error:
        raise SpeedyError(f"{path}: {error}") from None
    config.source = str(path)
    return config
