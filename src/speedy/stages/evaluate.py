"""Evaluate: the test metrics of every model the report keeps (each teacher candidate's best point, each
student's best point per mode), stored as they finish."""

from __future__ import annotations

from typing import TYPE_CHECKING

from speedy.evaluate import evaluate_model
from speedy.models.build import load_tokenizer
from speedy.selection import models_to_report

if TYPE_CHECKING:
    from speedy.pipeline import Study


def run(study: Study) -> None:
    for task_spec in study.config.tasks:
        data, task = study.data(task_spec), study.task(task_spec)
        study.console.rule(f"Evaluating on the test split of '{task_spec.name}'")
        for trial in models_to_report(study.store, study.config, task_spec):
            if trial.test_metrics:
                continue
            model = task.model_class().from_pretrained(trial.checkpoint)
            metrics = evaluate_model(model, load_tokenizer(trial.checkpoint), task, data.splits["test"],
                                     task_spec.max_length, source=data.sources["test"])
            study.store.update(trial.key, test_metrics=metrics)
            study.console.print(f"  {trial.name}: {', '.join(f'{k} {v:.4f}' for k, v in metrics.items())}")
