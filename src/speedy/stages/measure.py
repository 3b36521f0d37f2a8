"""Measure: parameters and MACs, then speed in every engine of the config; an engine that runs its own file
(ONNX) also scores the test split (what int8 costs). Each measurement is stored as it finishes, so a killed run
redoes only one."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from speedy.bench.engines import get_engine, load_engine
from speedy.bench.macs import count_macs
from speedy.bench.size import count_parameters
from speedy.bench.speed import random_inputs, time_model
from speedy.config import TaskSpec
from speedy.evaluate import evaluate_model
from speedy.models.build import load_tokenizer
from speedy.selection import models_to_report, speed_kind
from speedy.store import Trial

if TYPE_CHECKING:
    from speedy.pipeline import Study


def run(study: Study) -> None:
    speed = study.config.speed
    for task in study.config.tasks:
        study.console.rule(f"Measuring '{task.name}': size, MACs and speed (batch {speed.batch_size}, length "
                           f"{speed.length}, {speed.warmup} warm-up + {speed.runs} runs, engines "
                           f"{', '.join(speed.engines)})")
        for trial in models_to_report(study.store, study.config, task):
            if not study.store.measurement(trial.key, "size"):
                study.store.measure(trial.key, "size", measure_size(trial, study.config.speed))
            for engine in speed.engines:
                kind = speed_kind(speed, engine)
                if not study.store.measurement(trial.key, kind):
                    study.store.measure(trial.key, kind, measure_speed(study, task, trial, engine))


def measure_size(trial: Trial, speed) -> dict:
    model = load_engine(trial.checkpoint, "torch")
    macs = count_macs(model, speed.batch_size, speed.length)
    return {**count_parameters(model), "macs": macs["macs"], "thop_macs": macs["thop_macs"],
            "macs_batch_size": speed.batch_size, "macs_length": speed.length}


def measure_speed(study: Study, task_spec: TaskSpec, trial: Trial, engine: str) -> dict:
    speed = study.config.speed
    model = load_engine(trial.checkpoint, engine, speed.threads, export_missing=True)
    runs_weights = get_engine(engine).needs_weights
    if runs_weights and torch.cuda.is_available():
        model = model.cuda()
    result = time_model(model, random_inputs(model.config.vocab_size, speed.batch_size, speed.length),
                        speed.warmup, speed.runs, speed.threads)
    task = study.task(task_spec)
    if not runs_weights:  # an engine of its own file: what it costs in test score
        data = study.data(task_spec)
        result["test_metrics"] = evaluate_model(model, load_tokenizer(trial.checkpoint), task, data.splits["test"],
                                                task_spec.max_length, source=data.sources["test"])
    shown = (f", test {task.primary_metric} {result['test_metrics'][task.primary_metric]:.4f}"
             if "test_metrics" in result else "")
    study.console.print(f"  {trial.name} \\[{engine}]: {result['inferences_per_second']:.1f} inferences/s "
                        f"({result['threads']} threads){shown}")
    return result
