"""Shared pieces of every training run: arguments, resuming a killed run, saving the result atomically."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import EarlyStoppingCallback, TrainerCallback, TrainingArguments

from speedy.distill.trainer import DistillationTrainer, TaskTrainer
from speedy.tasks.base import lower_is_better


def training_args(output_dir: Path, *, epochs: int, batch_size: int, learning_rate: float, seed: int,
                  metric: str = "loss", greater_is_better: bool = False, warmup_ratio: float = 0.0,
                  weight_decay: float = 0.0, eval_batch_size: int = 64, **extra) -> TrainingArguments:
    """Evaluate and checkpoint every epoch, keep the best checkpoint by ``metric`` and load it at the end.

    Batches group examples of similar length (still shuffled every epoch) so little compute goes to padding.
    """
    return TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=epochs, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size, learning_rate=learning_rate, seed=seed,
        eval_strategy="epoch", save_strategy="epoch", logging_strategy="epoch", save_total_limit=1,
        load_best_model_at_end=True, metric_for_best_model=metric, greater_is_better=greater_is_better,
        warmup_steps=warmup_ratio,  # transformers 5 reads a float below 1 as a share of all steps
        weight_decay=weight_decay, report_to="none",
        save_only_model=False,  # optimizer and scheduler state too: a killed trial resumes mid-way
        # ... and early stopping's count of epochs without progress: else a resumed run starts it again at 0 and
        # trains up to `patience` epochs longer than the same run unkilled (seen on a QA student resumed at epoch 7)
        restore_callback_states_from_checkpoint=True,
        dataloader_num_workers=0, remove_unused_columns=False, train_sampling_strategy="group_by_length",
        disable_tqdm=False, use_cpu=not torch.cuda.is_available(), **extra)


# What the Trainer needs to resume (weights in one of these forms; optimizer and scheduler unless
# save_only_model). It writes the weights first, then the optimizer, scheduler and random states, and
# trainer_state.json last: a run killed in between leaves a folder it cannot resume from.
WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
OPTIMIZER = ("optimizer.pt", "scheduler.pt")


def checkpoint_complete(folder: Path, optimizer: bool = True) -> bool:
    try:
        json.loads((Path(folder) / "trainer_state.json").read_text())
    except (OSError, ValueError):  # missing, or cut short by the kill
        return False
    if not any((Path(folder) / name).is_file() for name in WEIGHTS):
        return False
    return not optimizer or all((Path(folder) / name).is_file() for name in OPTIMIZER)


def last_complete_checkpoint(output_dir: Path, optimizer: bool = True, remove: bool = True) -> Path | None:
    """The newest checkpoint a killed run left complete in ``output_dir``; with ``remove``, incomplete ones
    (half-written, or half-deleted by the Trainer's rotation) are deleted so nothing later picks them up."""
    output_dir = Path(output_dir)
    numbered = []
    for folder in output_dir.glob("checkpoint-*") if output_dir.is_dir() else []:
        match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
        if match and folder.is_dir():
            numbered.append((int(match.group(1)), folder))
    last = None
    for _, folder in sorted(numbered, reverse=True):
        if checkpoint_complete(folder, optimizer):
            last = last or folder
        elif remove:
            shutil.rmtree(folder, ignore_errors=True)
    return last


def train_resumably(trainer) -> None:
    """Train, continuing from the last complete checkpoint a killed run left in the output folder (or from the
    start when there is none)."""
    output_dir = Path(trainer.args.output_dir)
    # every rank picks the same checkpoint; only the main process deletes the incomplete ones
    last = last_complete_checkpoint(output_dir, optimizer=not trainer.args.save_only_model,
                                    remove=trainer.is_world_process_zero())
    if last is not None and trainer.is_world_process_zero():
        _repoint_best(last, output_dir)
    trainer.train(resume_from_checkpoint=str(last) if last is not None else None)


def _repoint_best(checkpoint: Path, output_dir: Path) -> None:
    """The state names the best checkpoint by the path of the process that wrote it; a worker that mounts the
    shared folder elsewhere (or runs from another folder) would not find it, and the Trainer would then drop
    it and end with the last model instead of the best. Point it at the same checkpoint in ``output_dir``."""
    path = checkpoint / "trainer_state.json"
    state = json.loads(path.read_text())
    best = state.get("best_model_checkpoint")
    here = output_dir / Path(best).name if best else None
    if here is None or not here.is_dir() or best == str(here):
        return
    state["best_model_checkpoint"] = str(here)
    write_json_atomically(path, state)  # never a half-written state: that would make the checkpoint incomplete


def write_json_atomically(path: Path, value) -> None:
    """Write ``value`` as JSON under a temporary name, then rename: the file is whole or absent."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def save_atomically(model, tokenizer, target: Path, complete=None) -> Path:
    """Write the model and tokenizer under a temporary name, then rename: a folder that exists is complete.
    ``complete(folder)`` adds what else the folder holds (a task type's extra files) before the rename."""
    target = Path(target)
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if complete is not None:
        complete(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def remove_checkpoints(output_dir: Path) -> None:
    for path in Path(output_dir).glob("checkpoint-*"):
        shutil.rmtree(path, ignore_errors=True)


def one_class_everywhere(predictions, label_ids) -> bool:
    """Whether the model predicts the same class at every scored position (examples for classification, words
    for tagging: positions whose label is -100 are not scored). QA predicts spans, and is never one class."""
    if predictions is None or isinstance(predictions, tuple):
        return False
    guesses = np.asarray(predictions).argmax(-1)
    labels = None if label_ids is None or isinstance(label_ids, tuple) else np.asarray(label_ids)
    if labels is not None and labels.shape == guesses.shape:
        guesses = guesses[labels != -100]
    return guesses.size > 1 and np.unique(guesses).size == 1


# The metric each evaluation records (as eval_one_class in the Trainer's log, which a resumed run restores): 1.0
# when the model predicted one class everywhere. Left out of the trial's validation metrics.
ONE_CLASS = "one_class"


class CollapseGuard(TrainerCallback):
    """Watches for a collapsed run: one class predicted on every validation example. With ``stop``, a run that
    does so at each of its first ``epochs`` evaluations is stopped there, since more epochs rarely revive it
    (Mosbach et al., "On the Stability of Fine-tuning BERT", 2021; Dodge et al., 2020, stop such seeds early) and a
    new seed is the better use of the time. ``record`` wraps the metrics function so that each evaluation logs
    its verdict; the guard reads the verdicts from the Trainer's log, so a killed and resumed run counts the
    evaluations made before the kill."""

    def __init__(self, stop: bool = False, epochs: int = 2):
        self.stop, self.epochs = stop, epochs

    @staticmethod
    def record(compute_metrics, classifies: bool = True):
        """``classifies``: whether the predictions are class scores (an embedding's vector is not: its largest
        dimension says nothing, and such a run is never called collapsed)."""
        def wrapped(prediction):
            verdict = classifies and one_class_everywhere(prediction.predictions, prediction.label_ids)
            return {**compute_metrics(prediction), ONE_CLASS: float(verdict)}
        return wrapped

    def on_evaluate(self, args, state, control, **kwargs):
        verdicts = [entry[f"eval_{ONE_CLASS}"] for entry in state.log_history if f"eval_{ONE_CLASS}" in entry]
        if self.stop and len(verdicts) == self.epochs and all(verdicts):
            control.should_training_stop = True


def fit(model, tokenizer, task, data, output_dir: Path, *, epochs: int, batch_size: int, learning_rate: float,
        seed: int, max_length: int, metric: str = "loss", patience: int | None = None, warmup_ratio: float = 0.0,
        weight_decay: float = 0.0, teacher_caches=None, objective=None, mixed_precision: str = "no",
        train_split=None, stop_collapsed: bool = False) -> dict:
    """Train on the task's train split, validating every epoch; save the best model to ``output_dir/model``.

    With ``teacher_caches`` (one per teacher) the loss is the KD ``objective`` (see
    :class:`~speedy.distill.trainer.DistillationTrainer`); without them it is the task's own loss on gold labels
    (stage 1, and students trained without KD). ``train_split`` replaces the data's training split (KD: the gold
    examples followed by unlabelled transfer text, in the order the teacher caches hold them).

    The result's ``collapsed`` says whether the saved model predicts one class on every validation example; with
    ``stop_collapsed``, a run that does so at each of its first two evaluations is stopped there
    (:class:`CollapseGuard`), for a caller that will train it again from another seed.
    """
    output_dir = Path(output_dir)
    train_split = data.splits["train"] if train_split is None else train_split
    train = task.encode(train_split, tokenizer, max_length, with_index=bool(teacher_caches),
                        source=data.sources["train"])
    validation = task.encode(data.splits["validation"], tokenizer, max_length, source=data.sources["validation"])
    args = training_args(output_dir, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                         metric=metric, greater_is_better=not lower_is_better(metric), warmup_ratio=warmup_ratio,
                         weight_decay=weight_decay, fp16=mixed_precision == "fp16", bf16=mixed_precision == "bf16")
    guard = CollapseGuard(stop=stop_collapsed)
    callbacks = [guard] + ([EarlyStoppingCallback(early_stopping_patience=patience)] if patience else [])
    metrics_of = task.validation_metrics(data.splits["validation"], tokenizer, max_length,
                                         source=data.sources["validation"])
    kwargs = dict(model=model, args=args, train_dataset=train, eval_dataset=validation,
                  data_collator=task.collator(tokenizer), processing_class=tokenizer,
                  compute_metrics=guard.record(lambda p: metrics_of(p.predictions, p.label_ids), task.classifies),
                  callbacks=callbacks, task=task)
    if teacher_caches:
        trainer = DistillationTrainer(teacher_caches=teacher_caches, objective=objective, **kwargs)
    else:
        trainer = TaskTrainer(**kwargs)
    if epochs > 0:  # 0: a model used as it is (an embedding teacher), only evaluated and saved
        train_resumably(trainer)
    history = epoch_history(trainer.state.log_history, metric)  # before the final evaluation joins the log
    metrics = trainer.evaluate()
    collapsed = bool(metrics.pop(f"eval_{ONE_CLASS}", 0.0))  # the saved (best) model's verdict
    trainer.model.config.speedy_task = task.describe(max_length)  # lets `speedy evaluate --model` rebuild the task
    saved = save_atomically(trainer.model, tokenizer, output_dir / "model", complete=task.complete_folder)
    remove_checkpoints(output_dir)
    return {"val_loss": float(metrics["eval_loss"]),
            "val_metrics": {k.removeprefix("eval_"): float(v) for k, v in metrics.items()
                            if k.startswith("eval_") and isinstance(v, (int, float))},
            "checkpoint": str(saved.resolve()), "epochs_run": float(trainer.state.epoch or 0),
            "collapsed": collapsed, "history": history,
            "best_epoch": best_epoch(history, metric, greater_is_better=not lower_is_better(metric))}


def run_info(result: dict) -> dict:
    """What a trial's record keeps of a :func:`fit` result beside its scores: epochs run, the epoch kept, and
    every epoch's validation figures."""
    return {key: result.get(key) for key in ("epochs_run", "best_epoch", "history")}


def epoch_history(log_history: list[dict], metric: str) -> list[dict]:
    """Each epoch's validation loss and ``metric``, from the Trainer's log (which a resumed run restores from its
    checkpoint, so a killed run's early epochs are in it): what a study keeps to say which epoch won and why a run
    stopped where it did."""
    rows = []
    for entry in log_history:
        if "eval_loss" in entry and "epoch" in entry:
            row = {"epoch": round(float(entry["epoch"]), 2), "loss": float(entry["eval_loss"])}
            if f"eval_{metric}" in entry:
                row[metric] = float(entry[f"eval_{metric}"])
            rows.append(row)
    return rows


def best_epoch(history: list[dict], metric: str, greater_is_better: bool) -> float | None:
    """The epoch whose checkpoint the Trainer kept: the first best by ``metric`` (it keeps a new best only when
    strictly better)."""
    scored = [row for row in history if metric in row]
    if not scored:
        return None
    best = (max if greater_is_better else min)(scored, key=lambda row: row[metric])
    return best["epoch"]
