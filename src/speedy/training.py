"""Shared pieces of every training run: arguments, resuming a killed run, saving the result atomically."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import TrainingArguments
from transformers.trainer_utils import get_last_checkpoint


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
        dataloader_num_workers=0, remove_unused_columns=False, train_sampling_strategy="group_by_length",
        disable_tqdm=False, use_cpu=not torch.cuda.is_available(), **extra)


def train_resumably(trainer) -> None:
    """Train, continuing from the last checkpoint a killed run left in the output folder."""
    output_dir = trainer.args.output_dir
    last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    trainer.train(resume_from_checkpoint=last)


def save_atomically(model, tokenizer, target: Path) -> Path:
    """Write the model and tokenizer under a temporary name, then rename: a folder that exists is complete."""
    target = Path(target)
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def remove_checkpoints(output_dir: Path) -> None:
    for path in Path(output_dir).glob("checkpoint-*"):
        shutil.rmtree(path, ignore_errors=True)


def fit(model, tokenizer, task, data, output_dir: Path, *, epochs: int, batch_size: int, learning_rate: float,
        seed: int, max_length: int, metric: str = "loss", patience: int | None = None, warmup_ratio: float = 0.0,
        weight_decay: float = 0.0, teacher_cache=None, distillation_loss=None, mixed_precision: str = "no") -> dict:
    """Train on the task's train split, validating every epoch; save the best model to ``output_dir/model``.

    With a ``teacher_cache`` the loss is KD (see :class:`~speedy.distill.trainer.DistillationTrainer`);
    without one it is the task's own loss on gold labels (stage 1, and students trained without KD).
    """
    from transformers import EarlyStoppingCallback, Trainer

    from speedy.distill.trainer import DistillationTrainer

    output_dir = Path(output_dir)
    train = task.encode(data.splits["train"], tokenizer, max_length, with_index=teacher_cache is not None,
                        source=data.sources["train"])
    validation = task.encode(data.splits["validation"], tokenizer, max_length, source=data.sources["validation"])
    args = training_args(output_dir, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                         metric=metric, greater_is_better=metric != "loss", warmup_ratio=warmup_ratio,
                         weight_decay=weight_decay, fp16=mixed_precision == "fp16", bf16=mixed_precision == "bf16")
    kwargs = dict(model=model, args=args, train_dataset=train, eval_dataset=validation,
                  data_collator=task.collator(tokenizer), processing_class=tokenizer,
                  compute_metrics=lambda p: task.compute_metrics(p.predictions, p.label_ids),
                  callbacks=[EarlyStoppingCallback(early_stopping_patience=patience)] if patience else [])
    if teacher_cache is not None:
        trainer = DistillationTrainer(teacher_cache=teacher_cache, distillation_loss=distillation_loss, task=task,
                                      **kwargs)
    else:
        trainer = Trainer(**kwargs)
    train_resumably(trainer)
    metrics = trainer.evaluate()
    trainer.model.config.speedy_task = task.describe(max_length)  # lets `speedy evaluate --model` rebuild the task
    saved = save_atomically(trainer.model, tokenizer, output_dir / "model")
    remove_checkpoints(output_dir)
    return {"val_loss": float(metrics["eval_loss"]),
            "val_metrics": {k.removeprefix("eval_"): float(v) for k, v in metrics.items()
                            if k.startswith("eval_") and isinstance(v, (int, float))},
            "checkpoint": str(saved.resolve()), "epochs_run": float(trainer.state.epoch or 0)}
