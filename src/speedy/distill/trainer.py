"""The trainers: the ``transformers`` Trainer that validates in the task's way (:class:`TaskTrainer`), and stage 3's
one with a KD objective read from teacher caches (:class:`DistillationTrainer`).

KD changes only ``compute_loss``. Training batches carry ``example_index``; the objective asks the task for the
student's rows of each signal and the matching teacher rows in each cache (so no teacher runs during training
and the data can be shuffled every epoch). Evaluation batches carry no index and get the task's ordinary loss
against gold labels, so validation losses of students and teachers compare. A *training* batch without
``example_index`` is an error: falling back to the gold loss would silently train without KD.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import SequentialSampler
from transformers import Trainer

from speedy.distill.cache import TeacherCache
from speedy.distill.losses import DistillationObjective
from speedy.errors import SpeedyError
from speedy.tasks.base import EXTRA_KEYS, Task


PROJECTIONS = "kd_projections.pt"


class TaskTrainer(Trainer):
    """The Trainer, validating in the order of the validation split when the task's metrics need it
    (``Task.ordered_validation``: QA maps each window's logits to its question by the window's row). Otherwise
    validation batches are grouped by length like training ones, which pads less, and predictions travel with
    their labels, so order does not matter."""

    def __init__(self, *args, task: Task, **kwargs):
        super().__init__(*args, **kwargs)
        self.task = task

    @property
    def compares_within_batches(self) -> bool:
        """Whether the loss compares the examples of a batch with each other, so that the task may choose what
        shares a batch: the task's own loss (without KD: embeddings' in-batch contrastive one), and in KD the gold
        term or the relation term."""
        return True

    @property
    def sampling_teacher(self):
        """The teacher cache the task's training order may read (none without KD)."""
        return None

    def _get_train_sampler(self, train_dataset=None):
        """The task's order when the loss compares a batch's examples and the task has one (embeddings: each
        passage in the batch of its queries), else the Trainer's (shuffled, grouped by length)."""
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.compares_within_batches and dataset is not None:
            # the batches the loss sees (one forward pass each), not those of an accumulated step
            sampler = self.task.train_sampler(dataset, self._train_batch_size, self.sampling_teacher)
            if sampler is not None:
                return sampler
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        if self.task.ordered_validation and eval_dataset is not None:
            return SequentialSampler(eval_dataset)
        return super()._get_eval_sampler(eval_dataset)


class DistillationTrainer(TaskTrainer):
    """``teacher_caches``: one cache per teacher, over the same training examples; ``objective``: the KD terms."""

    def __init__(self, *args, task: Task, teacher_caches: list[TeacherCache] | None = None,
                 objective: DistillationObjective | None = None, **kwargs):
        super().__init__(*args, task=task, **kwargs)
        if not teacher_caches or objective is None:
            raise SpeedyError("distill: the KD trainer needs teacher caches and an objective")
        sizes = {len(cache) for cache in teacher_caches}
        if len(sizes) > 1:
            raise SpeedyError(f"distill: the teacher caches cover different numbers of examples ({sorted(sizes)}): "
                              f"every teacher must run over the same training split")
        self.teacher_caches, self.objective = list(teacher_caches), objective
        self.objective.to(self.args.device)

    @property
    def compares_within_batches(self) -> bool:
        return self.objective.alpha > 0 or any(term.kind == "relation" for term in self.objective.terms)

    @property
    def sampling_teacher(self):
        return self.teacher_caches[0]

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, plus the objective's projections (if any) in a group of their own: they learn
        with the student, at its learning rate, without weight decay."""
        had_optimizer = self.optimizer is not None
        optimizer = super().create_optimizer(model)
        extra = [p for p in self.objective.parameters() if p.requires_grad]
        if extra and not had_optimizer:
            optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
        return optimizer

    def _save_checkpoint(self, model, trial):
        """A checkpoint also holds the projections' weights, so a resumed run continues with the same ones (the
        optimizer state it restores refers to them). They stay out of the saved student."""
        super()._save_checkpoint(model, trial)
        if len(self.objective.projections):
            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            tmp = folder / f"{PROJECTIONS}.tmp"
            torch.save(self.objective.projections.state_dict(), tmp)
            tmp.replace(folder / PROJECTIONS)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = Path(resume_from_checkpoint) / PROJECTIONS
        if len(self.objective.projections) and path.is_file():
            self.objective.projections.load_state_dict(torch.load(path, map_location=self.args.device))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        extras = {name: inputs.pop(name) for name in EXTRA_KEYS if name in inputs}
        hidden = model.training and "example_index" in extras and self.objective.student_needs_hidden_states
        outputs = model(**inputs, output_hidden_states=True) if hidden else model(**inputs)
        if "example_index" not in extras:
            if model.training:
                raise SpeedyError("distill: a training batch carries no example_index, so its teacher rows cannot be "
                                  "found: encode the training split with with_index=True")
            loss = outputs.loss
        else:
            loss = self.objective(self.task, outputs, inputs, extras, self.teacher_caches)
        return (loss, outputs) if return_outputs else loss
