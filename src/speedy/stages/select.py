"""Stage 2: per task, the teacher candidate with the lowest validation loss (the paper's rule), or with the best
validation metric (``grid.select_by: metric``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from speedy.errors import SpeedyError
from speedy.selection import best_teacher
from speedy.store import Trial
from speedy.trials import FINETUNE

if TYPE_CHECKING:
    from speedy.pipeline import Study


def run(study: Study) -> dict[str, Trial]:
    chosen = {}
    for task in study.config.tasks:
        trials = study.store.trials(FINETUNE, task.name)
        if not trials:
            raise SpeedyError(f"select: no finished fine-tuning trial for task '{task.name}': "
                              "run 'speedy finetune' first")
        by, metric = study.config.grid.select_by, study.task(task).selection_metric
        best = best_teacher(trials, by, metric)
        study.store.select(task.name, best.key)
        chosen[task.name] = best
        study.console.print(candidates_table(task.name, trials, best, by, metric))
    return chosen


def candidates_table(task: str, trials: list[Trial], best: Trial, by: str = "loss", metric: str = "loss") -> Table:
    rule = "lowest validation loss" if by == "loss" else f"best validation {metric}"
    table = Table(title=f"Stage 2: teacher candidates for '{task}' ({rule} wins)")
    shown = metric if metric != "loss" else "accuracy"
    for column in ("", "model", "batch", "epochs", "lr", "seed", "val loss", f"val {shown}", "minutes"):
        table.add_column(column)
    for trial in sorted(trials, key=lambda t: t.val_loss):
        p = trial.params
        table.add_row("*" if trial.key == best.key else "", p["model"]["name"], str(p["batch_size"]),
                      str(p["epochs"]), f"{p['learning_rate']:g}", str(p.get("seed", "")), f"{trial.val_loss:.4f}",
                      f"{trial.val_metrics.get(shown, float('nan')):.4f}", f"{(trial.seconds or 0) / 60:.1f}")
    return table
