"""Which trials a study keeps, read from the store and the config alone (no data, no models).

Stage 2 keeps, per task, the teacher candidate with the lowest validation loss (or, with ``grid.select_by: metric``,
the best validation metric; ``distill.teachers: k`` takes the next ones in that order); evaluation, measurement and the
report keep, per teacher candidate, its best grid point (lowest validation loss) and, per student and mode (KD or
gold labels only), its best grid point by the validation metric its early stopping followed (highest, or lowest
for a loss: see :func:`speedy.tasks.base.selection_score`).
"""

from __future__ import annotations

import torch

from speedy.config import SpeedSettings, StudyConfig, TaskSpec
from speedy.store import Store, Trial
from speedy.tasks import TASK_CLASSES
from speedy.tasks.base import selection_score
from speedy.trials import DISTILL, FINETUNE, followed_metric


def best_teacher(trials: list[Trial], by: str = "loss", metric: str = "loss") -> Trial:
    """The paper's rule (``by="loss"``): the candidate with the lowest validation loss; ``by="metric"``: the
    highest validation ``metric`` (signed, so a loss metric still picks the lowest)."""
    return ranked_teachers(trials, by, metric)[0]


def shared_metric(trials: list[Trial], metric: str) -> str:
    """``metric`` when every trial's record has it, else ``"loss"``: teachers compared by a metric that one of them
    lacks (a QA teacher recorded before QA validated by F1) are compared by loss instead, so that a choice or a
    weight never depends on when each teacher was trained."""
    return metric if all(metric in (t.val_metrics or {}) for t in trials) else "loss"


def ranked_teachers(trials: list[Trial], by: str = "loss", metric: str = "loss") -> list[Trial]:
    """Teacher candidates best first, by the rule of :func:`best_teacher` (ties keep the store's order; by a metric
    one candidate lacks, all by loss: :func:`shared_metric`)."""
    if by == "loss" or shared_metric(trials, metric) == "loss":
        return sorted(trials, key=lambda t: t.val_loss)
    return sorted(trials, key=lambda t: -selection_score(t.val_metrics, t.val_loss, metric))


def models_to_report(store: Store, config: StudyConfig, task: TaskSpec) -> list[Trial]:
    """Per teacher candidate its best grid point, then per student and mode its best grid point."""
    best_per_teacher: dict[str, Trial] = {}
    for trial in store.trials(FINETUNE, task.name):
        name = trial.params["model"]["name"]
        if name not in best_per_teacher or trial.val_loss < best_per_teacher[name].val_loss:
            best_per_teacher[name] = trial
    best_per_student: dict[tuple, tuple[tuple, Trial]] = {}
    current = config.distill.metric or TASK_CLASSES[task.type].selection_metric
    for trial in store.trials(DISTILL, task.name):
        group = (trial.params["model"]["name"], trial.params["mode"])
        metric = followed_metric(trial.params, task.type)
        # scores by different metrics do not compare: trials kept by today's rule first, then by their own metric
        score = (metric == current, selection_score(trial.val_metrics, trial.val_loss, metric))
        if group not in best_per_student or score > best_per_student[group][0]:
            best_per_student[group] = (score, trial)
    return list(best_per_teacher.values()) + [trial for _, trial in best_per_student.values()]


def speed_kind(speed: SpeedSettings, engine: str = "torch") -> str:
    """The store's name for one engine's speed measurement under the config's protocol."""
    device = "cuda" if torch.cuda.is_available() and engine == "torch" else "cpu"
    return f"speed-{engine}-{device}-b{speed.batch_size}-l{speed.length}"
