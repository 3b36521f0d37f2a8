"""The KD objective a study's ``distill`` settings ask for: the paper's logit term, plus hidden-state and
relation terms over a map from student layers to teacher layers.

* **Logits** (always): ``distill.loss`` (kl, ce, mse) at ``distill.temperature``, weight 1.
* **Hidden states** (``hidden_weight`` > 0): for each mapped pair ``(student layer s, teacher layer t)``, the
  ``hidden_loss`` (mse, or cosine) between the student's ``hidden.s`` and the teacher's ``hidden.t`` at the
  task's units (a word's first sub-token, an example's mean), through a learned projection when widths differ
  (PKD, Sun et al. 2019; TinyBERT, Jiao et al. 2020). The weight is split over the pairs, so adding layers does
  not add loss.
* **Relations** (``relation_weight`` > 0): :func:`~speedy.distill.losses.similarity_relation` between the last
  mapped pair (MiniLM distils the last layer's relations only).

Layer maps (``hidden_layers``), for a student of ``n`` layers and a teacher of ``m`` (0 is the embeddings):
``uniform`` pairs student layer ``i`` with teacher layer ``round(i * m / n)`` for ``i = 1..n`` (PKD-skip);
``last`` pairs ``n`` with ``m``; a list gives the pairs.

Example::

    >>> from speedy.config import DistillSettings
    >>> [(t.student_signal, t.signal) for t in objective_for(DistillSettings(hidden_weight=1.0), 2, 12).terms][1:]
    [('hidden.1', 'hidden.6'), ('hidden.2', 'hidden.12')]
"""

from __future__ import annotations

from speedy.config import DistillSettings
from speedy.distill.losses import DistillationObjective, KDTerm
from speedy.errors import SpeedyError


def layer_map(layers: str | list, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """``[(student layer, teacher layer), ...]`` for ``distill.hidden_layers``."""
    if layers == "uniform":
        return [(i, round(i * teacher_layers / student_layers)) for i in range(1, student_layers + 1)]
    if layers == "last":
        return [(student_layers, teacher_layers)]
    pairs = [(int(s), int(t)) for s, t in layers]
    for s, t in pairs:
        if s > student_layers or t > teacher_layers:
            raise SpeedyError(f"distill.hidden_layers: pair [{s}, {t}]: the student has layers 0..{student_layers} "
                              f"and the teacher 0..{teacher_layers} (0: embeddings)")
    return pairs


def objective_for(settings: DistillSettings, student_layers: int, teacher_layers: int,
                  teacher_scores: list[float] | None = None) -> DistillationObjective:
    """The weighted KD terms of ``settings`` for a student of ``student_layers`` layers and its teacher(s);
    ``teacher_scores``: the teachers' validation scores (higher is better), for ``teacher_weighting: score``."""
    terms = [KDTerm("logits", settings.loss, 1.0, settings.temperature)]
    pairs = layer_map(settings.hidden_layers, student_layers, teacher_layers)
    if settings.hidden_weight > 0:
        weight = settings.hidden_weight / len(pairs)
        unit = "tokens" if settings.hidden_units == "tokens" else "hidden"
        terms += [KDTerm(f"{unit}.{t}", settings.hidden_loss, weight, student_signal=f"{unit}.{s}") for s, t in pairs]
    if settings.relation_weight > 0:
        s, t = pairs[-1]
        terms.append(KDTerm(f"hidden.{t}", "relation", settings.relation_weight, student_signal=f"hidden.{s}"))
    weights = teacher_scores if settings.teacher_weighting == "score" and teacher_scores else None
    return DistillationObjective(terms, settings.alpha, weights)
