"""Stage 1: every teacher candidate over its grid (one Optuna grid study per task and candidate)."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from speedy.build import build_model
from speedy.config import ModelSpec, TaskSpec
from speedy.training import fit, run_info
from speedy.trials import TrialSpec, finetune_space, finetune_spec

if TYPE_CHECKING:
    from speedy.pipeline import Study


def run(study: Study) -> None:
    for task in study.config.tasks:
        study.console.rule(f"Stage 1: fine-tuning teacher candidates on '{task.name}'")
        for teacher in study.config.teachers:
            study.search.grid(f"{study.config.name}/{task.name}/finetune/{teacher.name}",
                              finetune_space(study.config, teacher, task), partial(_run_point, study, task, teacher),
                              keys=partial(_key, study, task, teacher))


def _key(study: Study, task: TaskSpec, teacher: ModelSpec, point: dict) -> str:
    return finetune_spec(study.config, task, teacher, point).key(study.data_fingerprint(task))


def _run_point(study: Study, task: TaskSpec, teacher: ModelSpec, point: dict) -> tuple[str, float | None]:
    """Train one grid point (or skip it when done); its value for the search is the validation loss."""
    spec = finetune_spec(study.config, task, teacher, point)
    key, trial = study.run_trial(spec, partial(train_teacher, study, spec))
    return key, (trial.val_loss if trial else None)


def train_teacher(study: Study, spec: TrialSpec, output_dir) -> dict:
    data, task = study.data(spec.task), study.task(spec.task)
    model, tokenizer = build_model(spec.model, task, study.corpus(spec.task), study.cache_dir, seed=spec.seed)
    result = fit(model, tokenizer, task, data, output_dir, epochs=spec.epochs, batch_size=spec.batch_size,
                 learning_rate=spec.learning_rate, seed=spec.seed, max_length=spec.task.max_length, metric="loss",
                 warmup_ratio=0.1, mixed_precision=study.config.distill.mixed_precision)
    return {**result, "info": run_info(result)}
