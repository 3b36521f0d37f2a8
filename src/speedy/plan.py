"""What a study will run, before running anything: every trial, how many, and the compute they need.

Compute is estimated as training MACs = 3 x forward MACs (backward costs about twice the forward) x training
examples x epochs, at the task's maximum length; distillation adds one teacher forward pass over the training
split (the cache) and counts its epochs at the maximum (early stopping usually ends sooner). Shapes come from the
paper models' published configs (``models.registry.ARCHITECTURES``) or a local folder's ``config.json``, example
counts from the named dataset's published size or the local training file, so nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from speedy.bench.macs import encoder_macs
from speedy.config import ModelSpec, StudyConfig, TaskSpec
from speedy.data.catalog import DATASETS
from speedy.models.registry import ARCHITECTURES
from speedy.tasks import load_task_data
from speedy.trials import DISTILL, planned_specs


@dataclass
class PlannedTrial:
    stage: str  # finetune | distill
    task: str
    model: str
    settings: str
    examples: int | None
    epochs: int
    forward_macs: int | None  # per example at the task's maximum length
    done: bool = False

    @property
    def training_macs(self) -> float | None:
        if self.forward_macs is None or self.examples is None:
            return None
        return 3.0 * self.forward_macs * self.examples * self.epochs


def model_shape(spec: ModelSpec) -> tuple | None:
    """(layers, hidden, ffn, heads, embedding, vocabulary) of the model a spec builds, or None if unknown."""
    base = spec.base or spec.name
    shape = ARCHITECTURES.get(base)
    if shape is None and (Path(base) / "config.json").is_file():
        c = json.loads((Path(base) / "config.json").read_text("utf-8"))
        hidden = c.get("hidden_size", c.get("dim"))
        shape = (c.get("num_hidden_layers", c.get("n_layers")), hidden, c.get("intermediate_size", c.get("hidden_dim")),
                 c.get("num_attention_heads", c.get("n_heads")), c.get("embedding_size", hidden), c.get("vocab_size"))
    if shape is None:
        return None
    if spec.kind == "albert-base-n" or (spec.kind == "truncate" and isinstance(spec.layers, int)):
        shape = (int(spec.layers),) + tuple(shape[1:])
    elif spec.kind == "truncate":
        shape = (len(spec.layers),) + tuple(shape[1:])
    return shape


def train_examples(task: TaskSpec) -> int | None:
    if task.data.dataset:
        return DATASETS[task.data.dataset].train_examples
    if task.data.train and Path(task.data.train).is_file():
        try:
            return len(load_task_data(task, Path("/nonexistent"), Path("/nonexistent")).splits["train"])
        except Exception:  # noqa: BLE001 - a plan must not fail on data it only counts
            return None
    return None


def forward_macs(spec: ModelSpec, task: TaskSpec, labels: int = 2) -> int | None:
    shape = model_shape(spec)
    if shape is None:
        return None
    layers, hidden, ffn, _heads, embedding, _vocab = shape
    return encoder_macs(layers, hidden, ffn, embedding, task.max_length, 1, task.type, labels)


def settings_signature(params: dict) -> str:
    """A trial's parameters without its data fingerprint and teacher key, which the plan cannot know without
    reading the data and selecting teachers. A stored trial with the planned one's signature is that trial (its
    data aside); its name alone is not enough, since a name leaves out most KD settings."""
    return json.dumps({k: v for k, v in params.items() if k not in ("data", "teacher")}, sort_keys=True, default=str)


def plan(config: StudyConfig, done: set[tuple[str, str]] = frozenset()) -> list[PlannedTrial]:
    """Every trial of stages 1 and 3 (the same specs the stages run), then the TPE trials, whose KD settings
    are drawn at run time: only their count is known. ``done``: ``(task, settings_signature)`` of the store's
    finished trials."""
    examples = {task.name: train_examples(task) for task in config.tasks}
    trials = [PlannedTrial(spec.stage, spec.task.name, spec.model.name, spec.name, examples[spec.task.name],
                           spec.epochs, forward_macs(spec.model, spec.task),
                           (spec.task.name, settings_signature(spec.params(""))) in done)
              for spec in planned_specs(config)]
    if config.distill.search_trials > 0:
        n = config.distill.search_trials
        trials += [PlannedTrial(DISTILL, task.name, student.name, f"{student.name} (KD) TPE trial {i + 1}/{n}",
                                examples[task.name], config.distill.epochs, forward_macs(student, task))
                   for task in config.tasks for student in config.students if student.kd for i in range(n)]
    return trials


def teacher_cache_macs(config: StudyConfig) -> float:
    """One forward pass of the largest teacher candidate over each task's training split (an upper bound)."""
    total = 0.0
    for task in config.tasks:
        examples = train_examples(task) or 0
        largest = max((forward_macs(t, task) or 0 for t in config.teachers), default=0)
        total += largest * examples if any(s.kd for s in config.students) else 0
    return total


def readable(value: float) -> str:
    """One decimal (no decimals from 100 on), or two significant digits below 0.1: a small study is not 0.0."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 0.1 or value == 0 else f"{value:.2g}"


def pmac(macs: float) -> str:
    return readable(macs / 1e15)


def print_plan(config: StudyConfig, console, done: set[tuple[str, str]] = frozenset()) -> list[PlannedTrial]:
    trials = plan(config, done)
    for t in trials:  # plain lines (one per trial, never wrapped), so the list can be grepped and counted
        macs = t.training_macs
        shown = f"{macs / 1e15:10.2f} PMAC" if macs is not None else "         ? PMAC"
        examples = t.examples if t.examples is not None else "?"
        print(f"{'done' if t.done else 'todo'} {t.stage:8s} {t.task:14s} {t.settings:44s} examples {examples:>7} "
              f"epochs {t.epochs:>2} compute {shown}")
    table = Table(title=f"Plan of '{config.name}': {len(trials)} trials "
                        f"({sum(t.done for t in trials)} already in the store)")
    for column in ("stage", "task", "trials", "to run", "training compute (PMAC)"):
        table.add_column(column, justify="left" if column in ("stage", "task") else "right")
    groups: dict[tuple[str, str], list[PlannedTrial]] = {}
    for t in trials:
        groups.setdefault((t.stage, t.task), []).append(t)
    for (stage, task), group in groups.items():
        known = [t.training_macs for t in group if t.training_macs is not None]
        table.add_row(stage, task, str(len(group)), str(sum(not t.done for t in group)),
                      pmac(sum(known)) + ("" if len(known) == len(group) else " (+ unknown)"))
    cache = teacher_cache_macs(config)
    total = sum(t.training_macs or 0 for t in trials) + cache
    console.print(table)
    console.print(f"teacher caches: {pmac(cache)} PMAC; total: {pmac(total)} PMAC "
                  f"(= {readable(total * 2 / 1e18)} EFLOP; about {readable(total * 2 / 100e12 / 3600)} GPU-hours at an "
                  "effective 100 TFLOP/s)")
    return trials
