"""What a study runs, as data: one frozen :class:`TrialSpec` per trial, from the config alone.

The runner (``speedy.stages``), ``speedy run --plan`` and the search all derive their trials from here, so the plan
counts exactly what a run records. A spec's ``name`` needs only the config; its store ``key`` also hashes the
data's fingerprint and, for KD, the selected teacher's key, so a changed dataset or teacher is a new trial.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

from speedy.config import DistillSettings, ModelSpec, StudyConfig, TaskSpec
from speedy.store import trial_key
from speedy.tasks import task_class

FINETUNE, DISTILL = "finetune", "distill"  # stages that train
KD, GOLD = "kd", "finetune"  # how a student learns: from its teacher, or from the gold labels only


@dataclass(frozen=True)
class TrialSpec:
    """One training run: a teacher candidate at one grid point, or a student in one mode at one KD point."""

    stage: str  # FINETUNE | DISTILL
    task: TaskSpec
    model: ModelSpec
    batch_size: int
    epochs: int
    learning_rate: float
    seed: int
    mode: str = GOLD  # DISTILL: KD or GOLD; a teacher candidate always learns from the gold labels
    settings: DistillSettings | None = None  # DISTILL: the KD settings of this point (scalars, not axes)
    show_point: bool = False  # DISTILL: name the grid point (it has more than one); FINETUNE: name the seed

    @property
    def name(self) -> str:
        """A readable label, unique within its task and stage."""
        if self.stage == FINETUNE:
            if self.epochs == 0:  # a teacher used as it is (embeddings): no batch or learning rate applies
                return f"{self.model.name} (as it is)"
            seed = f" seed={self.seed}" if self.show_point else ""  # the grid has a seed axis
            return f"{self.model.name} bs={self.batch_size} ep={self.epochs} lr={self.learning_rate:g}{seed}"
        name = f"{self.model.name} ({'KD' if self.mode == KD else 'fine-tuned'})"
        if self.show_point:
            name += f" bs={self.batch_size} lr={self.learning_rate:g}"
        if self.mode == KD and self.settings.search_trials > 0:
            s = self.settings
            name += f" {s.loss} alpha={s.alpha:.2f} T={s.temperature:.2f}"
        return name

    def params(self, data_fingerprint: str, teacher_key: str | None = None) -> dict:
        """Everything the trial's result depends on: its store key is a hash of this."""
        task = {"name": self.task.name, "type": self.task.type, "max_length": self.task.max_length,
                "scheme": self.task.scheme, "stride": self.task.stride}
        common = {"stage": self.stage, "task": task, "data": data_fingerprint,
                  "model": without_new_defaults(self.model)}
        if self.stage == FINETUNE:
            return {**common, "batch_size": self.batch_size, "epochs": self.epochs,
                    "learning_rate": self.learning_rate, "seed": self.seed}
        params = {**common, "mode": self.mode, "settings": without_new_defaults(self.settings),
                  "teacher": teacher_key if self.mode == KD or self.model.init == "teacher" else None,
                  "seed": self.seed}
        if self.settings.metric is None and self.task.type in SELECTION_CHANGED:
            # a student kept by the type's old rule is another trial
            params["selection_metric"] = task_class(self.task.type).selection_metric
        return params

    def key(self, data_fingerprint: str, teacher_key: str | None = None) -> str:
        return trial_key(self.params(data_fingerprint, teacher_key))

    @property
    def point(self) -> dict:
        """The grid point, as the search names its axes."""
        if self.stage == FINETUNE:
            point = {"batch_size": self.batch_size, "epochs": self.epochs, "learning_rate": self.learning_rate}
            return point | ({"seed": self.seed} if self.show_point else {})
        return {"batch_size": self.batch_size, "learning_rate": self.learning_rate}


# Settings added after stores existed: left out of a trial's key while at their default, so the trials of
# earlier studies keep their keys (and are not trained again) and only a trial that uses a new lever differs.
NEW_SETTINGS = {"init": "pretrained", "seed": None, "teachers": 1, "transfer": True, "hidden_weight": 0.0,
                "hidden_loss": "mse", "hidden_layers": "uniform", "hidden_units": "task", "relation_weight": 0.0, "teacher_weighting": "equal"}


# Task types whose students' default selection metric (``Task.selection_metric``, when ``distill.metric`` is not
# set) changed after stores existed, with the old one: their keys name the new one, so a student whose best epoch
# was chosen by the old rule is not taken for one chosen by the new (QA chose by validation loss until December
# 2026, and its trials of that time have no F1 in their records).
SELECTION_CHANGED = {"qa": "loss"}


def followed_metric(params: dict, task_type: str) -> str:
    """The validation metric a student trial's early stopping and best checkpoint followed, read from its params:
    ``distill.metric`` when set, else the one its key names, else the type's default of the time it was recorded."""
    return (params["settings"].get("metric") or params.get("selection_metric")
            or SELECTION_CHANGED.get(task_type) or task_class(task_type).selection_metric)


# Settings that change only a run that failed (a collapsed student trained again): never part of a key, so turning
# them on keeps every healthy trial done earlier.
RESCUE_SETTINGS = {"restarts"}


def without_new_defaults(settings) -> dict:
    return {name: value for name, value in dataclasses.asdict(settings).items()
            if name not in RESCUE_SETTINGS and not (name in NEW_SETTINGS and value == NEW_SETTINGS[name])}


def finetune_space(config: StudyConfig, teacher: ModelSpec, task: TaskSpec) -> dict[str, list]:
    """A teacher candidate's grid (its own learning rates when it has them). A task type whose teacher is used
    as it is (embeddings) has one point of 0 epochs: the teacher evaluated, not trained."""
    grid = config.grid
    if task_class(task.type).teacher_as_is:
        return {"batch_size": list(grid.batch_size)[:1], "epochs": [0],
                "learning_rate": list(teacher.learning_rate or grid.learning_rate)[:1]}
    space = {"batch_size": list(grid.batch_size), "epochs": list(grid.epochs),
             "learning_rate": list(teacher.learning_rate or grid.learning_rate)}
    if grid.seeds:  # a fragile fine-tuning gets several draws; selection then sees them all
        space["seed"] = list(grid.seeds)
    return space


def finetune_spec(config: StudyConfig, task: TaskSpec, teacher: ModelSpec, point: dict) -> TrialSpec:
    return TrialSpec(FINETUNE, task, teacher, point["batch_size"], point["epochs"], point["learning_rate"],
                     point.get("seed", config.seed), show_point="seed" in point)


def distill_space(config: StudyConfig) -> dict[str, list]:
    """The KD grid every student runs (in each of its modes)."""
    return {"batch_size": list(config.distill.batch_size), "learning_rate": list(config.distill.learning_rate)}


def student_modes(student: ModelSpec, task: TaskSpec) -> list[str]:
    """How ``student`` trains on ``task``: KD, and fine-tuned on the gold labels when asked, unless the task's
    students all learn from its teacher (an embedding task: its teacher used as it is)."""
    gold = student.finetune and not task_class(task.type).teacher_as_is
    return [mode for mode, wanted in ((KD, student.kd), (GOLD, gold)) if wanted]


def distill_spec(config: StudyConfig, task: TaskSpec, student: ModelSpec, mode: str, point: dict) -> TrialSpec:
    """``point``: the grid axes, and for a TPE trial also the KD settings it drew (loss, alpha, temperature)."""
    settings = dataclasses.replace(config.distill, **point)
    space = distill_space(config)
    seed = config.seed if settings.seed is None else settings.seed
    return TrialSpec(DISTILL, task, student, settings.batch_size, settings.epochs, settings.learning_rate,
                     seed, mode=mode, settings=settings,
                     show_point=len(space["batch_size"]) * len(space["learning_rate"]) > 1)


def grid_points(space: dict[str, list]) -> list[dict]:
    """Every point of a grid, in the order of ``itertools.product`` over its axes."""
    return [dict(zip(space, values)) for values in itertools.product(*space.values())]


def planned_specs(config: StudyConfig) -> list[TrialSpec]:
    """Every grid trial of stages 1 and 3, in the order the stages go through them (TPE trials, drawn at run
    time, are not among them: the plan counts those apart)."""
    specs = []
    for task in config.tasks:
        for teacher in config.teachers:
            specs += [finetune_spec(config, task, teacher, p) for p in grid_points(finetune_space(config, teacher, task))]
        for student in config.students:
            for mode in student_modes(student, task):
                if mode == KD and config.distill.search_trials > 0:
                    continue
                specs += [distill_spec(config, task, student, mode, p) for p in grid_points(distill_space(config))]
    return specs
