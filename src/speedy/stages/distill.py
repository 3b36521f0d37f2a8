"""Stage 3: every student, in each of its modes (KD from the selected teacher, gold labels only), over the KD
grid (or, with ``distill.search_trials``, KD settings drawn by TPE). The teacher's outputs are computed once per
task into the teacher cache and shared by every KD student of the task."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from speedy.build import build_model
from speedy.config import DistillSettings, ModelSpec, TaskSpec
from speedy.distill.cache import TeacherCache
from speedy.distill.losses import DistillationObjective
from speedy.distill.teacher import teacher_cache_for
from speedy.errors import SpeedyError
from speedy.models.build import check_layers, load_tokenizer
from speedy.store import Trial
from speedy.tasks.base import selection_score
from speedy.training import fit
from speedy.trials import KD, TrialSpec, distill_space, distill_spec, student_modes

if TYPE_CHECKING:
    from speedy.pipeline import Study


class SharedTeacherCache:
    """The selected teacher's outputs on a task's training split: built (or read from disk) when the first KD
    student needs them, then shared. ``load_seconds`` is this run's cost (a build, or only a read); the build's
    own time stays in the cache (``build_seconds``), which the KD-time tables need."""

    def __init__(self, study: Study, task: TaskSpec, teacher: Trial):
        self.study, self.task, self.teacher = study, task, teacher
        self.cache: TeacherCache | None = None
        self.load_seconds = 0.0

    def get(self) -> TeacherCache:
        if self.cache is None:
            start = time.time()
            data, task = self.study.data(self.task), self.study.task(self.task)
            model = task.model_class().from_pretrained(self.teacher.checkpoint)
            self.cache = teacher_cache_for(model, load_tokenizer(self.teacher.checkpoint), task, data.splits["train"],
                                           self.task.max_length, self.study.output_dir / "teacher-cache",
                                           source=data.sources["train"], teacher_name=self.teacher.name)
            self.load_seconds = time.time() - start
            self.study.console.print(f"  teacher cache {self.cache.folder.name}: {len(self.cache)} examples "
                                     f"(teacher pass {self.cache.build_seconds or 0:.1f} s when built; "
                                     f"{self.load_seconds:.1f} s now)")
        return self.cache


def run(study: Study) -> None:
    for i, student in enumerate(study.config.students):
        check_layers(student, study.cache_dir, f"students[{i}]")
    for task in study.config.tasks:
        teacher = selected_teacher(study, task)
        study.console.rule(f"Stage 3: distilling '{teacher.name}' on '{task.name}'")
        cache = SharedTeacherCache(study, task, teacher)
        for student in study.config.students:
            for mode in student_modes(student):
                run_student(study, task, student, mode, teacher.key, cache)


def selected_teacher(study: Study, task: TaskSpec) -> Trial:
    trial = study.store.selection(task.name)
    if trial is None:
        raise SpeedyError(f"distill: no teacher selected for task '{task.name}': run 'speedy select' first")
    return trial


def run_student(study: Study, task: TaskSpec, student: ModelSpec, mode: str, teacher_key: str,
                cache: SharedTeacherCache) -> None:
    """One student in one mode: its Optuna grid study, or its TPE search of the KD settings."""
    settings = study.config.distill
    name = f"{study.config.name}/{task.name}/distill/{student.name}/{mode}"
    run_point = partial(_run_point, study, task, student, mode, teacher_key, cache)
    key = partial(_key, study, task, student, mode, teacher_key)
    if mode == KD and settings.search_trials > 0:
        context = key({"batch_size": settings.batch_size[0], "learning_rate": settings.learning_rate[0]})
        study.search.tpe(f"{name}/tpe/{context[:12]}", settings.search_trials, partial(suggest, settings),
                         run_point)
    else:
        study.search.grid(name, distill_space(study.config), run_point, key, direction="maximize")


def suggest(settings: DistillSettings, trial) -> dict:
    """A TPE trial's KD settings, and a point of the KD grid."""
    (low_a, high_a), (low_t, high_t) = settings.search_alpha, settings.search_temperature
    return {"loss": trial.suggest_categorical("loss", list(settings.search_losses)),
            "alpha": trial.suggest_float("alpha", low_a, high_a),
            "temperature": trial.suggest_float("temperature", low_t, high_t),
            "batch_size": trial.suggest_categorical("batch_size", list(settings.batch_size)),
            "learning_rate": trial.suggest_categorical("learning_rate", list(settings.learning_rate))}


def _key(study: Study, task: TaskSpec, student: ModelSpec, mode: str, teacher_key: str, point: dict) -> str:
    return distill_spec(study.config, task, student, mode, point).key(study.data_fingerprint(task), teacher_key)


def _run_point(study: Study, task: TaskSpec, student: ModelSpec, mode: str, teacher_key: str,
               cache: SharedTeacherCache, point: dict) -> tuple[str, float | None]:
    """Train one point (or skip it when done); its value for the search: the selection score (higher is
    better)."""
    spec = distill_spec(study.config, task, student, mode, point)
    key, trial = study.run_trial(spec, partial(train_student, study, spec, cache), teacher_key)
    metric = spec.settings.metric or study.task(task).selection_metric
    return key, (selection_score(trial.val_metrics, trial.val_loss, metric) if trial else None)


def train_student(study: Study, spec: TrialSpec, cache: SharedTeacherCache, output_dir: Path) -> dict:
    data, task = study.data(spec.task), study.task(spec.task)
    settings = spec.settings
    model, tokenizer = build_model(spec.model, task, data.texts(), study.cache_dir, seed=spec.seed)
    kd = spec.mode == KD
    result = fit(model, tokenizer, task, data, output_dir, epochs=settings.epochs, batch_size=settings.batch_size,
                 learning_rate=settings.learning_rate, seed=spec.seed, max_length=spec.task.max_length,
                 metric=settings.metric or task.selection_metric, patience=settings.patience,
                 warmup_ratio=settings.warmup_ratio, weight_decay=settings.weight_decay,
                 mixed_precision=settings.mixed_precision, teacher_caches=[cache.get()] if kd else None,
                 objective=DistillationObjective.single(settings.loss, settings.alpha, settings.temperature)
                 if kd else None)
    result["info"] = {"epochs_run": result.get("epochs_run")}
    if kd:  # Tables 5-8 need the teacher pass's time, which a run that found the cache on disk did not pay
        result["info"].update(teacher_cache=cache.cache.folder.name, teacher_cache_seconds=cache.cache.build_seconds,
                              teacher_cache_load_seconds=cache.load_seconds)
    return result
