"""Stage 3's trainer: the ``transformers`` Trainer with a KD loss read from the teacher cache.

Only ``compute_loss`` changes. Training batches carry ``example_index``; the trainer looks up the teacher's rows
for those examples in the cache (so the teacher never runs during training and the data can be shuffled every
epoch) and asks the task for the student's matching rows. Evaluation batches carry no index and get the task's
ordinary loss against gold labels, so validation losses of students and teachers compare. A *training* batch
without ``example_index`` is an error: falling back to the gold loss would silently train without KD.
"""

from __future__ import annotations

from transformers import Trainer

from speedy.distill.cache import TeacherCache
from speedy.distill.losses import DistillationLoss
from speedy.errors import SpeedyError
from speedy.tasks.base import EXTRA_KEYS, Task


class DistillationTrainer(Trainer):
    def __init__(self, *args, teacher_cache: TeacherCache, distillation_loss: DistillationLoss, task: Task, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher_cache = teacher_cache
        self.distillation_loss = distillation_loss
        self.task = task

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        extras = {name: inputs.pop(name) for name in EXTRA_KEYS if name in inputs}
        outputs = model(**inputs)
        if "example_index" not in extras:
            if model.training:
                raise SpeedyError("distill: a training batch carries no example_index, so its teacher rows cannot be "
                                  "found: encode the training split with with_index=True")
            loss = outputs.loss
        else:
            student, teacher, labels = self.task.kd_rows(outputs, inputs, extras, self.teacher_cache)
            loss = self.distillation_loss(student, teacher, labels)
        return (loss, outputs) if return_outputs else loss
