"""Per-sample gradients through the real models and losses equal one-sample-at-a-time gradients,
and one patient's clipped gradient does not depend on any other patient in the batch."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

from common.losses import task_loss
from common.models import build_model
from common.models.trainable import select_trainable

B = 3


def _batch(task: str, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 1, size, size, generator=g)
    y = torch.randint(0, 2, (B,), generator=g).float() if task == "classification" else torch.randint(0, 3, (B, size, size), generator=g)
    return x, y


def _model(tiny_config, task: str, trainable):
    cfg = tiny_config(f"task={task}")
    torch.manual_seed(1)
    model = build_model(cfg.model).train()
    select_trainable(model, trainable)
    return model, cfg.task.image_size


CASES = [
    ("classification", "all"),
    ("classification", ["norm", "head"]),
    ("segmentation", ["norm", "head", "decoder."]),
]


@pytest.mark.parametrize("task,trainable", CASES)
def test_per_sample_gradients_match_one_at_a_time(tiny_config, task, trainable):
    model, size = _model(tiny_config, task, trainable)
    x, y = _batch(task, size)
    gsm = GradSampleModule(model, loss_reduction="mean")
    # The training path: per-sample loss [B], reduced by mean afterwards.
    task_loss(task, gsm(x), y).mean().backward()
    params = [p for p in model.parameters() if p.requires_grad]
    per_sample = [p.grad_sample.detach().clone() for p in params]
    gsm._close()
    for i in range(B):
        model.zero_grad()
        task_loss(task, model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        for p, gs in zip(params, per_sample):
            torch.testing.assert_close(gs[i], p.grad, rtol=1e-4, atol=1e-5)  # float32 sums in another order: ~1e-6 apart


def _clipped_sum(model, task, x, y, max_grad_norm=0.05):
    """Opacus' own clip-and-accumulate: the summed clipped per-sample gradients."""
    gsm = GradSampleModule(model, loss_reduction="sum")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = DPOptimizer(torch.optim.SGD(params, lr=0.0), noise_multiplier=0.0, max_grad_norm=max_grad_norm, expected_batch_size=B)
    opt.zero_grad()
    task_loss(task, gsm(x), y).sum().backward()
    per_sample = [p.grad_sample.detach().clone() for p in params]
    opt.clip_and_accumulate()
    summed = [p.summed_grad.detach().clone() for p in params]
    gsm._close()
    return per_sample, summed


@pytest.mark.parametrize("task,trainable", CASES)
def test_changing_patient_j_leaves_patient_i_clipped_gradient(tiny_config, task, trainable):
    model, size = _model(tiny_config, task, trainable)
    x, y = _batch(task, size)
    x2, y2 = x.clone(), y.clone()
    x2[2] = torch.randn_like(x2[2]) * 3  # replace patient j=2 entirely
    y2[2] = 1 - y2[2] if task == "classification" else (y2[2] + 1) % 3
    ps_a, sum_a = _clipped_sum(model, task, x, y)
    ps_b, sum_b = _clipped_sum(model, task, x2, y2)
    for ga, gb in zip(ps_a, ps_b):
        torch.testing.assert_close(ga[:2], gb[:2], rtol=1e-4, atol=1e-7)
        assert not torch.allclose(ga[2], gb[2])
    # Summed clipped gradients differ by at most 2C (patient j's clipped contribution, in and out).
    diff = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(sum_a, sum_b)))
    assert diff <= 2 * 0.05 + 1e-5


def test_batch_reduced_dice_loss_breaks_independence(tiny_config):
    """Negative control: smp's DiceLoss reduces over the batch, so patient i's gradient
    changes when patient j changes. The check above would catch such a loss."""
    model, size = _model(tiny_config, "segmentation", ["norm", "head", "decoder."])
    dice = smp.losses.DiceLoss(mode="multiclass")
    x, y = _batch("segmentation", size)
    x2, y2 = x.clone(), y.clone()
    x2[2], y2[2] = torch.randn_like(x2[2]) * 3, (y2[2] + 1) % 3

    def grads(xb, yb):
        gsm = GradSampleModule(model, loss_reduction="sum")
        model.zero_grad()
        dice(gsm(xb), yb).backward()
        out = [p.grad_sample[0].clone() for p in model.parameters() if p.requires_grad]
        gsm._close()
        return out

    assert any(not torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(grads(x, y), grads(x2, y2)))
