"""KD losses against values computed by hand (numpy, independently of torch), as torchdistill does."""

import pytest
import torch

from speedy.distill.losses import DistillationLoss, kl_divergence, logit_mse, soft_cross_entropy
from speedy.errors import SpeedyError
from speedy.tasks.base import PAD_LOGIT

STUDENT = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
TEACHER = torch.tensor([[3.0, 2.0, 1.0], [0.0, 0.0, 2.0]])
LABELS = torch.tensor([2, 0])

# Golden values: mean over rows, T**2 factor for kl and ce; mse on the raw logits over all entries (the paper's:
# T does not enter it).
GOLDEN = {
    1.0: {"kl": 0.8211160890532618, "ce": 1.5701002209225752, "mse": 2.2083333333333335},
    2.0: {"kl": 0.9185262513247393, "ce": 4.909564583110846, "mse": 2.2083333333333335},
}
GOLD_CE = 0.5058682848905544


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_functions_match_hand_computed_values(temperature):
    expected = GOLDEN[temperature]
    assert kl_divergence(STUDENT, TEACHER, temperature).item() == pytest.approx(expected["kl"], rel=1e-6)
    assert soft_cross_entropy(STUDENT, TEACHER, temperature).item() == pytest.approx(expected["ce"], rel=1e-6)
    assert logit_mse(STUDENT, TEACHER, temperature).item() == pytest.approx(expected["mse"], rel=1e-6)


def test_kl_is_zero_when_student_matches_teacher_and_ce_is_the_teacher_entropy():
    assert kl_divergence(TEACHER, TEACHER).item() == pytest.approx(0.0, abs=1e-7)
    p = torch.softmax(TEACHER, -1)
    entropy = -(p * p.log()).sum(-1).mean()
    assert soft_cross_entropy(TEACHER, TEACHER).item() == pytest.approx(entropy.item(), rel=1e-6)


@pytest.mark.parametrize("kind", ["kl", "ce", "mse"])
def test_alpha_mixes_gold_cross_entropy_and_kd(kind):
    kd = GOLDEN[1.0][kind]
    assert DistillationLoss(kind, alpha=0.0)(STUDENT, TEACHER).item() == pytest.approx(kd, rel=1e-6)
    assert DistillationLoss(kind, alpha=1.0)(STUDENT, TEACHER, LABELS).item() == pytest.approx(GOLD_CE, rel=1e-6)
    mixed = DistillationLoss(kind, alpha=0.25)(STUDENT, TEACHER, LABELS).item()
    assert mixed == pytest.approx(0.25 * GOLD_CE + 0.75 * kd, rel=1e-6)


def test_mse_leaves_padding_out_of_its_mean():
    """QA pads rows to the widest window of the batch; the padding must not dilute the MSE."""
    pad = torch.full((2, 4), PAD_LOGIT)
    padded_student, padded_teacher = torch.cat([STUDENT, pad], 1), torch.cat([TEACHER, pad], 1)
    assert logit_mse(padded_student, padded_teacher).item() == pytest.approx(GOLDEN[1.0]["mse"], rel=1e-6)
    assert kl_divergence(padded_student, padded_teacher).item() == pytest.approx(GOLDEN[1.0]["kl"], rel=1e-5)


@pytest.mark.parametrize("kind", ["kl", "ce", "mse"])
def test_alpha_above_zero_is_finite_when_the_batch_has_no_gold_row(kind):
    """QA windows that do not hold the answer are labelled -100; a batch of only those must not give NaN."""
    student = STUDENT.clone().requires_grad_(True)
    loss = DistillationLoss(kind, alpha=0.5)(student, TEACHER, torch.tensor([-100, -100]))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.5 * GOLDEN[1.0][kind], rel=1e-6)
    loss.backward()
    assert torch.isfinite(student.grad).all()


def test_loss_has_gradients_for_the_student_only():
    student = STUDENT.clone().requires_grad_(True)
    DistillationLoss("kl")(student, TEACHER).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, setting", [({"kind": "cosine"}, "distill.loss"), ({"alpha": 1.5}, "distill.alpha"),
                                             ({"temperature": 0.0}, "distill.temperature")])
def test_bad_settings_name_the_setting(kwargs, setting):
    with pytest.raises(SpeedyError, match=setting):
        DistillationLoss(**kwargs)
