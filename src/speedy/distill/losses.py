"""Knowledge-distillation losses: ``alpha * CE(gold) + (1 - alpha) * sum_i weight_i * KD_i(student, teachers)``.

Every function takes rows, one row per distilled unit (an example for classification, a word for tagging, a
start or end distribution for QA), shaped ``[rows, width]``; the caller has already gathered and aligned the
rows, so the losses know nothing of tokenizers. Rows of different widths (QA's windows cover different numbers
of units) are padded with ``PAD_LOGIT`` in both student and teacher: its probability is exactly 0, so KL and CE
ignore it, and MSE leaves the entries where the teacher holds it out of its mean.

The objective (:class:`DistillationObjective`) is a list of :class:`KDTerm`, each a loss ``kind`` on one named
*signal* (what the teacher cache stores: ``logits`` today), from every teacher given: a term's value is the
mean of its value against each teacher (for KL and CE that has the gradient of distilling toward the mean of the
teachers' distributions; for MSE, toward their mean logits), so teachers whose rows differ (another tokenizer
skips other words) still combine. :class:`DistillationLoss` is the one-term case on rows (the paper's).

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

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from speedy.errors import SpeedyError
from speedy.tasks.base import PAD_LOGIT, gold_cross_entropy, is_state_signal

KD_KINDS = ("kl", "ce", "mse")
LOGIT_KINDS = (*KD_KINDS, "cosine")  # cosine: for logits that are vectors (the embedding type's), not scores


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


def hidden_cosine(student_rows: torch.Tensor, teacher_rows: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``mean_rows (1 - cos(s, t))``: the direction of each hidden state, whatever its scale (a student's states
    need not match the size of the teacher's). ``temperature`` is ignored."""
    if student_rows.shape[0] == 0:
        return student_rows.sum() * 0.0
    return (1.0 - F.cosine_similarity(student_rows, teacher_rows, dim=-1)).mean()


RELATION_SCALE = 10.0  # cosine similarities / 0.1: sharp enough that near neighbours dominate each row


def similarity_relation(student_rows: torch.Tensor, teacher_rows: torch.Tensor,
                        temperature: float = 1.0) -> torch.Tensor:
    """KL between how each row relates to the batch's other rows, in teacher and student: row i's distribution
    is ``softmax_j(cos(r_i, r_j) * 10 / T)`` over the other rows j of the batch (its own similarity left out).

    It compares no vector with another model's vector, so it needs no projection whatever the widths: the
    similarity-preserving KD of Tung and Mori (2019), on the rows' hidden states, in the spirit of MiniLM's
    self-attention relations (Wang et al., 2020), here between words (tagging) or examples (classification) so
    that teacher and student tokenizers need not agree."""
    n = student_rows.shape[0]
    if n < 2:
        return student_rows.sum() * 0.0
    eye = torch.eye(n, dtype=torch.bool, device=student_rows.device)

    def log_relations(rows):
        rows = F.normalize(rows.float(), dim=-1)
        scores = (rows @ rows.T) * (RELATION_SCALE / temperature)
        return F.log_softmax(scores.masked_fill(eye, float("-inf")), dim=-1).masked_fill(eye, 0.0)

    log_s, log_t = log_relations(student_rows), log_relations(teacher_rows)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


KD_FUNCTIONS = {"kl": kl_divergence, "ce": soft_cross_entropy, "mse": logit_mse, "cosine": hidden_cosine,
                "relation": similarity_relation}
HIDDEN_KINDS = ("mse", "cosine", "relation")  # on hidden.<layer> rows
PROJECTED_KINDS = ("mse", "cosine")  # on hidden states of different widths, through a learned projection


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise SpeedyError(f"distill.alpha: {alpha} is outside [0, 1]")


def mix_gold(kd: torch.Tensor, student_logits: torch.Tensor, labels, alpha: float,
             gold_loss=gold_cross_entropy) -> torch.Tensor:
    """``alpha * gold_loss(student_logits, labels) + (1 - alpha) * kd``; just ``kd`` when ``alpha`` is 0. The gold
    loss is cross-entropy (rows labelled -100 left out; a batch with no gold row adds nothing) unless the task
    has its own (:meth:`speedy.tasks.base.Task.gold_loss`: embeddings' in-batch contrastive loss)."""
    if alpha == 0.0:
        return kd
    return alpha * gold_loss(student_logits, labels) + (1.0 - alpha) * kd


@dataclass(frozen=True)
class KDTerm:
    """One KD term: the loss ``kind`` between the student's and a teacher's rows of ``signal``, times ``weight``.

    ``signal`` names what the teacher cache stores and the task pairs (``logits``; later ``hidden.<layer>``...);
    ``kind`` is a key of ``KD_FUNCTIONS`` (``kl``, ``ce``, ``mse``); ``temperature`` softens kl and ce."""

    signal: str = "logits"
    kind: str = "kl"
    weight: float = 1.0
    temperature: float = 1.0
    student_signal: str | None = None  # the student's side when it differs (hidden.2 learning hidden.6)

    def __post_init__(self):
        allowed = LOGIT_KINDS if self.signal == "logits" else HIDDEN_KINDS
        if self.kind not in allowed:
            raise SpeedyError(f"distill.loss: unknown KD loss '{self.kind}' on '{self.signal}' "
                              f"(allowed: {', '.join(allowed)})")
        if not self.temperature > 0:
            raise SpeedyError(f"distill.temperature: {self.temperature} must be above 0")
        if not 0.0 <= self.weight < float("inf"):
            raise SpeedyError(f"distill.weight: {self.weight} of the '{self.signal}' term must be a finite number >= 0")

    def __call__(self, student_rows: torch.Tensor, teacher_rows: torch.Tensor) -> torch.Tensor:
        teacher_rows = teacher_rows.to(student_rows.dtype)
        return KD_FUNCTIONS[self.kind](student_rows, teacher_rows, self.temperature)


class DistillationLoss(nn.Module):
    """``alpha * CE(student, gold) + (1 - alpha) * KD(student, teacher)`` on rows of logits: one :class:`KDTerm`.

    Args:
        kind: ``kl`` (KL divergence), ``ce`` (soft cross-entropy) or ``mse`` (on logits).
        alpha: weight of the gold cross-entropy, in [0, 1]; the paper's best is 0 (pure KD).
        temperature: softening temperature T > 0; the paper's best is 1.

    Inputs: ``student_logits`` and ``teacher_logits`` of shape ``[rows, classes]``; ``labels`` of shape
    ``[rows]`` (needed only when ``alpha > 0``; rows labelled -100 are left out of the CE term).
    """

    def __init__(self, kind: str = "kl", alpha: float = 0.0, temperature: float = 1.0):
        super().__init__()
        if kind not in KD_KINDS:
            raise SpeedyError(f"distill.loss: unknown KD loss '{kind}' (allowed: {', '.join(KD_KINDS)})")
        _check_alpha(alpha)
        self.term = KDTerm("logits", kind, 1.0, temperature)
        self.kind, self.alpha, self.temperature = kind, alpha, temperature

    def forward(self, student_logits, teacher_logits, labels=None) -> torch.Tensor:
        return mix_gold(self.term(student_logits, teacher_logits), student_logits, labels, self.alpha)

    def objective(self) -> "DistillationObjective":
        """The same loss as a :class:`DistillationObjective` (what the trainer takes)."""
        return DistillationObjective([self.term], self.alpha)


class DistillationObjective(nn.Module):
    """``alpha * CE(gold) + (1 - alpha) * sum_i weight_i * mean_teachers term_i``, on a batch (``teacher_weights``:
    a weighted mean over the teachers instead, e.g. by their validation scores; normalised to sum to 1).

    Each term asks the task for the student's and each teacher's rows of its signal
    (``task.kd_rows(outputs, inputs, extras, cache, signal)``); the gold CE is taken on the ``logits`` rows of the
    first teacher (the words or units that teacher saw, as with one teacher). With one term of weight 1 and one
    teacher this computes exactly what :class:`DistillationLoss` computes, operation for operation.
    """

    def __init__(self, terms, alpha: float = 0.0, teacher_weights=None):
        super().__init__()
        self.terms = tuple(terms)
        if not self.terms:
            raise SpeedyError("distill: the KD objective needs at least one term")
        _check_alpha(alpha)
        self.alpha = alpha
        self.teacher_weights = None
        if teacher_weights is not None:
            weights = torch.as_tensor(list(teacher_weights), dtype=torch.float32)
            if weights.ndim != 1 or len(weights) == 0 or bool((weights < 0).any()) or float(weights.sum()) <= 0:
                raise SpeedyError(f"distill: teacher weights must be non-negative with a positive sum, not "
                                  f"{list(teacher_weights)}")
            self.teacher_weights = weights / weights.sum()
        # Learned maps from a student's hidden width to a teacher's, one per term that compares vectors of
        # different widths: trained with the student (the trainer's optimizer gets them), never exported.
        self.projections = nn.ModuleDict()

    def project(self, student_width: int, teacher_widths: dict[str, int]) -> "DistillationObjective":
        """Add a projection to every hidden-state term whose teacher signal is wider or narrower than the
        student's hidden states (``teacher_widths``: ``{signal: width}``, from the teacher cache)."""
        for i, term in enumerate(self.terms):
            width = teacher_widths.get(term.signal)
            if is_state_signal(term.signal) and term.kind in PROJECTED_KINDS and width \
                    and width != student_width and str(i) not in self.projections:
                self.projections[str(i)] = nn.Linear(student_width, width)
        return self

    @property
    def student_needs_hidden_states(self) -> bool:
        return any(is_state_signal(term.student_signal or term.signal) for term in self.terms)

    @classmethod
    def single(cls, kind: str = "kl", alpha: float = 0.0, temperature: float = 1.0) -> "DistillationObjective":
        """The paper's objective: one ``kind`` term on the logits (``distill.loss``, ``alpha``, ``temperature``)."""
        return DistillationLoss(kind, alpha, temperature).objective()

    @property
    def signals(self) -> tuple[str, ...]:
        """The signals the teacher pass must store for this objective, in the order of the terms."""
        wanted = [term.signal for term in self.terms] + (["logits"] if self.alpha > 0 else [])
        return tuple(dict.fromkeys(wanted))

    def forward(self, task, outputs, inputs, extras, caches) -> torch.Tensor:
        caches = list(caches)
        if not caches:
            raise SpeedyError("distill: the KD objective needs at least one teacher cache")
        rows = {}  # (signal, student signal, teacher) -> (student rows, teacher rows, labels): once per batch

        def paired(signal: str, teacher: int, student_signal: str | None = None):
            key = (signal, student_signal, teacher)
            if key not in rows:
                rows[key] = task.kd_rows(outputs, inputs, extras, caches[teacher], signal, student_signal)
            return rows[key]

        kd = None
        for i, term in enumerate(self.terms):
            values = []
            if self.teacher_weights is not None and len(self.teacher_weights) != len(caches):
                raise SpeedyError(f"distill: {len(self.teacher_weights)} teacher weights for {len(caches)} teachers")
            for t in range(len(caches)):
                student, teacher, _ = paired(term.signal, t, term.student_signal)
                if str(i) in self.projections:
                    student = self.projections[str(i)](student)
                values.append(term(student, teacher))
            if len(values) == 1:
                value = values[0]
            elif self.teacher_weights is None:
                value = torch.stack(values).mean()
            else:  # weighted by the teachers' validation scores (they sum to 1)
                value = (torch.stack(values) * self.teacher_weights.to(values[0].device)).sum()
            value = value if term.weight == 1.0 else term.weight * value
            kd = value if kd is None else kd + value
        if self.alpha == 0.0:
            return kd
        student, _, labels = paired("logits", 0)
        return mix_gold(kd, student, labels, self.alpha, task.gold_loss)
