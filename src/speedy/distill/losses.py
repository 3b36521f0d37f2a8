"""Knowledge-distillation losses: ``alpha * CE(gold) + (1 - alpha) * KD(student, teacher)``.

Every function takes rows of logits, one row per distilled unit (an example for classification, a word for
tagging, a start or end distribution for QA), shaped ``[rows, classes]``; the caller has already gathered and
aligned the rows, so the losses know nothing of tokenizers. Rows of different widths (QA's windows cover
different numbers of units) are padded with ``PAD_LOGIT`` in both student and teacher: its probability is exactly
0, so KL and CE ignore it, and MSE leaves the entries where the teacher holds it out of its mean.

References: Hinton, Vinyals and Dean (2015), "Distilling the Knowledge in a Neural Network" (softened
softmax, the ``T**2`` factor that keeps gradient sizes comparable across temperatures); Cañete and
Bravo-Marquez, "Speedy Gonzales" (the combination with gold cross-entropy; best: alpha 0, T 1, KL).

Example::

    >>> import torch
    >>> loss = DistillationLoss(kind="kl", alpha=0.0, temperature=1.0)
    >>> student, teacher = torch.zeros(2, 3), torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    >>> round(loss(student, teacher).item(), 4)
    0.433
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speedy.errors import SpeedyError
from speedy.tasks.base import PAD_LOGIT

KD_KINDS = ("kl", "ce", "mse")


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T**2 * mean_rows KL(softmax(t/T) || softmax(s/T))``."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    per_row = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return per_row.mean() * temperature**2


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T**2 * mean_rows -sum softmax(t/T) * log_softmax(s/T)``: KL plus the teacher's (constant) entropy."""
    p_teacher = F.softmax(teacher_logits / temperature, dim=-1)
    per_row = -(p_teacher * F.log_softmax(student_logits / temperature, dim=-1)).sum(-1)
    return per_row.mean() * temperature**2


def logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean squared error between the raw logits, averaged over the entries that are not padding.

    ``temperature`` is accepted for a uniform signature and ignored: the paper's MSE compares raw logits (dividing
    both by T would only scale the term by ``1/T**2``, and a search over T would drift toward tiny KD terms)."""
    real = teacher_logits != PAD_LOGIT
    if bool(real.all()):
        return F.mse_loss(student_logits, teacher_logits)
    squared = (student_logits - teacher_logits).pow(2)
    return (squared * real).sum() / real.sum().clamp(min=1)


KD_FUNCTIONS = {"kl": kl_divergence, "ce": soft_cross_entropy, "mse": logit_mse}


class DistillationLoss(nn.Module):
    """``alpha * CE(student, gold) + (1 - alpha) * KD(student, teacher)``.

    Args:
        kind: ``kl`` (KL divergence), ``ce`` (soft cross-entropy) or ``mse`` (on logits).
        alpha: weight of the gold cross-entropy, in [0, 1]; the paper's best is 0 (pure KD).
        temperature: softening temperature T > 0; the paper's best is 1.

    Inputs: ``student_logits`` and ``teacher_logits`` of shape ``[rows, classes]``; ``labels`` of shape
    ``[rows]`` (needed only when ``alpha > 0``; rows labelled -100 are left out of the CE term).
    """

    def __init__(self, kind: str = "kl", alpha: float = 0.0, temperature: float = 1.0):
        super().__init__()
        if kind not in KD_FUNCTIONS:
            raise SpeedyError(f"distill.loss: unknown KD loss '{kind}' (allowed: {', '.join(KD_KINDS)})")
        if not 0.0 <= alpha <= 1.0:
            raise SpeedyError(f"distill.alpha: {alpha} is outside [0, 1]")
        if temperature <= 0:
            raise SpeedyError(f"distill.temperature: {temperature} must be above 0")
        self.kind, self.alpha, self.temperature = kind, alpha, temperature

    def forward(self, student_logits, teacher_logits, labels=None) -> torch.Tensor:
        teacher_logits = teacher_logits.to(student_logits.dtype)
        kd = KD_FUNCTIONS[self.kind](student_logits, teacher_logits, self.temperature)
        if self.alpha == 0.0:
            return kd
        if labels is None:
            raise SpeedyError("distill.alpha > 0 needs gold labels, and the batch has none")
        if bool((labels != -100).any()):
            ce = F.cross_entropy(student_logits, labels, ignore_index=-100)
        else:  # no gold row in this batch (QA windows without the answer): CE would be 0/0 = NaN
            ce = student_logits.sum() * 0.0  # keeps the graph, adds nothing
        return self.alpha * ce + (1.0 - self.alpha) * kd
