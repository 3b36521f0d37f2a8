"""Stage 3: every student, in each of its modes (KD from the selected teacher, gold labels only), over the KD
grid (or, with ``distill.search_trials``, KD settings drawn by TPE). Each teacher's outputs are computed once
per task into the teacher cache and shared by every KD student of the task.

Beyond the paper (issue 14's levers, each off by default): ``distill.teachers`` > 1 distils the top-k candidates
of stage 1 at once (each term averaged over them); the task's ``transfer_files`` add unlabelled examples the
teachers label (KD students only: a fine-tuned student has no labels for them); ``hidden_weight`` and
``relation_weight`` add hidden-state terms (:mod:`speedy.distill.recipe`); a student with ``init: teacher``
starts from the selected teacher's own fine-tuned layers. After a task's students, a teacher that scores below a
student fine-tuned on the same labels is reported loudly: it has nothing to teach.
"""

from __future__ import annotations

import shutil
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import AutoConfig

from speedy.build import build_from_teacher, build_model
from speedy.config import DistillSettings, ModelSpec, TaskSpec
from speedy.data.transfer import with_transfer
from speedy.distill.cache import TeacherCache
from speedy.distill.recipe import objective_for
from speedy.distill.teacher import check_same_tokens, teacher_cache_for
from speedy.errors import SpeedyError
from speedy.models.build import check_layers, load_tokenizer
from speedy.selection import ranked_teachers, shared_metric
from speedy.store import Trial
from speedy.tasks.base import lower_is_better, selection_score
from speedy.training import fit, run_info, write_json_atomically
from speedy.trials import DISTILL, FINETUNE, GOLD, KD, TrialSpec, distill_space, distill_spec, student_modes

if TYPE_CHECKING:
    from speedy.pipeline import Study


class SharedTeacherCache:
    """One teacher's outputs on a task's KD training split: built (or read from disk) when the first KD student
    needs them, then shared; a student that needs more signals (hidden layers) adds them in one more pass.
    ``load_seconds`` is this run's cost (a build, or only a read); the build's own time stays in the cache
    (``build_seconds``), which the KD-time tables need."""

    def __init__(self, study: Study, task: TaskSpec, teacher: Trial):
        self.study, self.task, self.teacher = study, task, teacher
        self.cache: TeacherCache | None = None
        self.load_seconds = 0.0

    def get(self, signals=("logits",)) -> TeacherCache:
        if self.cache is None or not set(signals) <= set(self.cache.signals):
            start = time.time()
            data, task = self.study.data(self.task), self.study.task(self.task)
            model = task.model_class().from_pretrained(self.teacher.checkpoint)
            wanted = tuple(dict.fromkeys([*(self.cache.signals if self.cache else ()), *signals]))
            self.cache = teacher_cache_for(model, load_tokenizer(self.teacher.checkpoint), task,
                                           kd_train_split(self.study, self.task), self.task.max_length,
                                           self.study.output_dir / "teacher-cache", source=data.sources["train"],
                                           signals=wanted, teacher_name=self.teacher.name)
            self.load_seconds += time.time() - start
            self.study.console.print(f"  teacher cache {self.cache.folder.name} ({self.teacher.name}): "
                                     f"{len(self.cache)} examples, {', '.join(self.cache.signals)} (teacher pass "
                                     f"{self.cache.build_seconds or 0:.1f} s when built; {self.load_seconds:.1f} s "
                                     f"now)")
        return self.cache


def kd_train_split(study: Study, task: TaskSpec):
    """What KD students train on: the gold training split, then the transfer text (when the task has some and
    ``distill.transfer`` is on), unlabelled."""
    train = study.data(task).splits["train"]
    lines = study.transfer_lines(task) if study.config.distill.transfer else []
    if not lines:
        return train
    return with_transfer(train, study.task(task).unlabelled_rows(lines, train.column_names))


def run(study: Study) -> None:
    for i, student in enumerate(study.config.students):
        if student.init != "teacher":
            check_layers(student, study.cache_dir, f"students[{i}]")
    for task in study.config.tasks:
        teachers = selected_teachers(study, task)
        names = ", ".join(t.name for t in teachers)
        study.console.rule(f"Stage 3: distilling {names} on '{task.name}'")
        caches = [SharedTeacherCache(study, task, teacher) for teacher in teachers]
        for student in study.config.students:
            for mode in student_modes(student, task):
                run_student(study, task, student, mode, teachers, caches)
        warn_if_teacher_is_weak(study, task, teachers[0])


def selected_teachers(study: Study, task: TaskSpec) -> list[Trial]:
    """The selected teacher, then (``distill.teachers`` > 1) the next-best candidates of stage 1 by the same
    rule."""
    trial = study.store.selection(task.name)
    if trial is None:
        raise SpeedyError(f"distill: no teacher selected for task '{task.name}': run 'speedy select' first")
    k = study.config.distill.teachers
    if k == 1:
        return [trial]
    ranked = ranked_teachers(study.store.trials(FINETUNE, task.name), study.config.grid.select_by,
                             study.task(task).selection_metric)
    others = [t for t in ranked if t.key != trial.key and t.checkpoint and Path(t.checkpoint).is_dir()]
    if len(others) < k - 1:
        raise SpeedyError(f"distill.teachers: {k} asked, but task '{task.name}' has {len(others) + 1} finished "
                          f"teacher candidates")
    return [trial, *others[: k - 1]]


def teachers_key(teachers: list[Trial]) -> str:
    """What a KD trial's key records of its teachers: the selected one's key, then the others'."""
    return "+".join(t.key for t in teachers)


def run_student(study: Study, task: TaskSpec, student: ModelSpec, mode: str, teachers: list[Trial],
                caches: list[SharedTeacherCache]) -> None:
    """One student in one mode: its Optuna grid study, or its TPE search of the KD settings."""
    settings = study.config.distill
    name = f"{study.config.name}/{task.name}/distill/{student.name}/{mode}"
    teacher_key = teachers_key(teachers)
    if mode == KD:  # before any teacher pass
        searched = settings.search_trials > 0 and settings.search_alpha[1] > 0
        if searched or settings.alpha > 0:
            setting = (f"distill.search_alpha ({', '.join(f'{a:g}' for a in settings.search_alpha)})" if searched
                       else f"distill.alpha ({settings.alpha:g})")
            study.task(task).check_gold(kd_train_split(study, task), f"{setting} of task '{task.name}'")
    run_point = partial(_run_point, study, task, student, mode, teacher_key, caches)
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
               caches: list[SharedTeacherCache], point: dict) -> tuple[str, float | None]:
    """Train one point (or skip it when done); its value for the search: the selection score (higher is
    better)."""
    spec = distill_spec(study.config, task, student, mode, point)
    if rescue_collapsed(study.store, spec.key(study.data_fingerprint(task), teacher_key), spec.settings.restarts):
        study.console.print(f"  [yellow]{spec.name}: ended collapsed with fewer restarts than distill.restarts "
                            f"now allows: trained again[/yellow]")
    key, trial = study.run_trial(spec, partial(train_student, study, spec, caches), teacher_key)
    metric = spec.settings.metric or study.task(task).selection_metric
    return key, (selection_score(trial.val_metrics, trial.val_loss, metric) if trial else None)


def train_student(study: Study, spec: TrialSpec, caches: list[SharedTeacherCache], output_dir: Path) -> dict:
    """Train the student of ``spec``; a run whose best model predicts one class on every validation example (a
    collapsed run) is trained again from a new seed, up to ``distill.restarts`` times, each restart in its own
    folder. A run doing so at each of its first two epochs is stopped there when a restart will follow. Every
    collapsed attempt leaves a marker file, so a killed run (or one given more restarts later) goes on with the
    next attempt instead of training the collapsed ones again."""
    restarts = spec.settings.restarts
    for attempt in range(restarts + 1):
        folder = Path(output_dir) / f"restart-{attempt}" if attempt else Path(output_dir)
        marker = Path(output_dir) / f"collapsed-{attempt}.json"
        seed = spec.seed + RESTART_SEED_STEP * attempt
        if attempt < restarts and marker.is_file():  # this attempt collapsed in an earlier run: go on with the next
            shutil.rmtree(folder / "model", ignore_errors=True)  # kept while it was the trial's last attempt
            continue
        result = _train_once(study, spec, caches, folder, seed, stop_collapsed=attempt < restarts)
        result["info"].update(seed=seed, restarts=attempt, collapsed=result["collapsed"])
        if not result["collapsed"]:
            return result
        if attempt < restarts:
            study.console.print(f"  [bold yellow]{spec.name}: predicts one class on every validation example "
                                f"(a collapsed run): training again from seed {seed + RESTART_SEED_STEP} "
                                f"(restart {attempt + 1} of {restarts})[/bold yellow]")
            shutil.rmtree(result["checkpoint"], ignore_errors=True)  # a model of one class is of no use
        write_json_atomically(marker, {"seed": seed, "val_metrics": result["val_metrics"]})
    study.console.print(f"[bold red]WARNING: {spec.name} predicts one class on every validation example: a "
                        f"collapsed run, which teaches nothing"
                        + (f" (after {restarts} restart{'s' * (restarts > 1)})" if restarts else
                           "; distill.restarts: 1 trains such a run again from a new seed") + "[/bold red]")
    return result


def rescue_collapsed(store, key: str, restarts: int) -> bool:
    """A finished trial that ended collapsed with fewer restarts than ``restarts`` now allows is opened again (its
    collapsed attempts are not retrained: their markers remain). ``restarts`` is in no key, so without this a
    raised setting would find the trial done and keep the collapsed model."""
    trial = store.get(key)
    info = (trial.info or {}) if trial else {}
    if trial is None or trial.status != "done" or not info.get("collapsed") or info.get("restarts", 0) >= restarts:
        return False
    store.update(key, status="failed")
    return True


# Restarts step the seed by this much, so a restart never repeats another seed of the same study (1, 2, 3, ...).
RESTART_SEED_STEP = 1000


def _train_once(study: Study, spec: TrialSpec, caches: list[SharedTeacherCache], output_dir: Path,
                seed: int, stop_collapsed: bool = False) -> dict:
    data, task = study.data(spec.task), study.task(spec.task)
    settings = spec.settings
    if spec.model.init == "teacher":
        model, tokenizer = build_from_teacher(spec.model, task, caches[0].teacher.checkpoint, seed=seed)
    else:
        model, tokenizer = build_model(spec.model, task, study.corpus(spec.task), study.cache_dir, seed=seed)
    kd = spec.mode == KD
    objective = teacher_caches = None
    train_split = kd_train_split(study, spec.task) if kd else None
    if kd:
        teacher_layers = _layers_of(caches[0].teacher.checkpoint)
        scores = (teacher_scores(study, spec.task, [c.teacher for c in caches], settings.metric)
                  if settings.teacher_weighting == "score" and len(caches) > 1 else None)
        objective = objective_for(settings, model.config.num_hidden_layers, teacher_layers, teacher_scores=scores)
        if any(signal.startswith("tokens.") for signal in objective.signals):  # before any teacher pass
            check_same_tokens(task, train_split, tokenizer, [load_tokenizer(cache.teacher.checkpoint)
                                                            for cache in caches], spec.task.max_length)
        teacher_caches = [cache.get(objective.signals) for cache in caches]
        for signal in objective.signals:  # one projection per term serves every teacher: their widths must agree
            widths = {cache.dim(signal) for cache in teacher_caches}
            if len(widths) > 1:
                raise SpeedyError(f"distill.teachers: the teachers' '{signal}' rows have different widths "
                                  f"({sorted(widths)}); hidden-state KD from several teachers needs equal widths")
        objective.project(model.config.hidden_size, {signal: teacher_caches[0].dim(signal)
                                                     for signal in objective.signals})
    result = fit(model, tokenizer, task, data, output_dir, epochs=settings.epochs, batch_size=settings.batch_size,
                 learning_rate=settings.learning_rate, seed=seed, max_length=spec.task.max_length,
                 metric=settings.metric or task.selection_metric, patience=settings.patience,
                 warmup_ratio=settings.warmup_ratio, weight_decay=settings.weight_decay,
                 mixed_precision=settings.mixed_precision, teacher_caches=teacher_caches, objective=objective,
                 train_split=train_split, stop_collapsed=stop_collapsed)
    result["info"] = run_info(result)
    if kd:  # Tables 5-8 need the teacher pass's time, which a run that found the cache on disk did not pay
        first = caches[0].cache
        result["info"].update(teacher_cache=first.folder.name, teacher_cache_seconds=first.build_seconds,
                              teacher_cache_load_seconds=caches[0].load_seconds,
                              teachers=[cache.teacher.name for cache in caches],
                              train_examples=len(first))
    return result


def teacher_scores(study: Study, task: TaskSpec, teachers: list[Trial], metric: str | None = None) -> list[float]:
    """The teachers' validation scores for weighting (positive, higher is better): their task metric, or the
    inverse of a metric that is better lower (the loss, when the task selects by it, or when one teacher's record
    lacks the metric: :func:`~speedy.selection.shared_metric`)."""
    metric = shared_metric(teachers, metric or study.task(task).selection_metric)  # distill.metric, else the task's
    values = [t.val_loss if metric == "loss" else t.val_metrics[metric] for t in teachers]
    return [1.0 / max(v, 1e-6) if lower_is_better(metric) else max(v, 1e-6) for v in values]


def _layers_of(checkpoint: str) -> int:
    return int(AutoConfig.from_pretrained(checkpoint).num_hidden_layers)


def warn_if_teacher_is_weak(study: Study, task: TaskSpec, teacher: Trial) -> None:
    """A teacher that a student fine-tuned on the same labels beats (on the validation metric) has nothing to
    teach, and its KD students copy its failure: say so loudly, with both scores."""
    metric = study.task(task).selection_metric
    if metric == "loss" or metric not in (teacher.val_metrics or {}):
        return
    for trial in study.store.trials(DISTILL, task.name):
        if trial.params.get("mode") != GOLD or metric not in (trial.val_metrics or {}):
            continue
        if trial.val_metrics[metric] > teacher.val_metrics[metric]:
            study.console.print(
                f"[bold red]WARNING: the teacher '{teacher.name}' (validation {metric} "
                f"{teacher.val_metrics[metric]:.4f}) scores below '{trial.name}', a student fine-tuned on the same "
                f"labels ({trial.val_metrics[metric]:.4f}): its KD students learn a weaker model than plain "
                f"fine-tuning. Give the teacher more epochs or data, a grid with stable settings (grid.seeds, "
                f"lower learning rates), or grid.select_by: metric.[/bold red]")
            return
