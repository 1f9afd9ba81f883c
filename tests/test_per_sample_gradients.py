"""Per-sample gradients through the real models and losses equal one-sample-at-a-time gradients,
and one patient's clipped gradient does not depend on any other patient in the batch, in every
``training.grad_sample_mode``."""

from __future__ import annotations

from functools import cache

import pytest
import segmentation_models_pytorch as smp
import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.optimizers import DPOptimizer
from torch.utils.data import DataLoader, TensorDataset

from client.private_training import GRAD_SAMPLE_MODES, make_private, resolve_grad_sample_mode
from common.losses import task_loss
from common.models import build_model
from common.models.trainable import select_trainable
from common.privacy.per_sample_norms import GHOST, PER_SAMPLE, norm_method, per_sample_sq_norms
from common.run_config import compose_config

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


# -- every grad_sample_mode against an independent computation ----------------------------------
# Every mode on the default trained parts (cheap: few parameters; convs, norms, head, per-image
# Dice+CE), and book-keeping, the only mode implemented here, also on every weight.
MODE_CASES = [("classification", ("norm", "head"), 32), ("segmentation", ("norm", "head", "decoder."), 64)]
BK_CASES = [("classification", "all", 32), ("segmentation", "all", 32)]
WEIGHTS = [0.1, 1.0, 3.0]


@cache
def _reference(task: str, trainable: str | tuple, size: int):
    """Model, batch, and each sample's gradient from its own backward pass (no Opacus)."""
    cfg = compose_config([f"task={task}", "model.trainable=all"])
    torch.manual_seed(1)
    model = build_model(cfg.model).train()
    select_trainable(model, trainable if isinstance(trainable, str) else list(trainable))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 1, size, size, generator=g)
    y = torch.randint(0, 2, (B,), generator=g).float() if task == "classification" else torch.randint(0, 3, (B, size, size), generator=g)
    weights = WEIGHTS if task == "segmentation" else None
    params = [p for p in model.parameters() if p.requires_grad]
    singles = []
    for i in range(B):
        grads = torch.autograd.grad(task_loss(task, model(x[i : i + 1]), y[i : i + 1], class_weights=weights).sum(), params)
        singles.append([gr.detach() for gr in grads])
    norms = torch.stack([torch.sqrt(sum(gr.pow(2).sum() for gr in one)) for one in singles])
    return model, x, y, weights, singles, norms


def _clipped_mean_by_hand(singles, norms, clip: float) -> list[torch.Tensor]:
    coef = (clip / (norms + 1e-6)).clamp(max=1.0)  # Opacus' flat clipping factor
    return [sum(coef[i] * singles[i][k] for i in range(B)) / B for k in range(len(singles[0]))]


def _one_private_step(mode: str, task: str, trainable, size: int, clip: float) -> list[torch.Tensor]:
    """p.grad after one σ=0 DP step of ``mode`` on the whole batch (lr=0 leaves the weights)."""
    import copy

    ref_model, x, y, weights, _, _ = _reference(task, trainable, size)
    model = copy.deepcopy(ref_model)
    params = [p for p in model.parameters() if p.requires_grad]
    loader = DataLoader(TensorDataset(x, y), batch_size=B)  # expected batch B, as in the hand mean
    private = make_private(
        PrivacyEngine(accountant="rdp"), model=model, optimizer=torch.optim.SGD(params, lr=0.0), loader=loader,
        noise_multiplier=0.0, max_grad_norm=clip, mode=mode, chunk_mib=1,
    )
    private.optimizer.zero_grad(set_to_none=True)
    private.backward(task_loss(task, private.model(x), y, class_weights=weights))
    private.optimizer.step()
    private.close()
    return [p.grad.detach().clone() for p in params]


@pytest.mark.parametrize(
    "mode,task,trainable,size",
    [(m, *case) for m in GRAD_SAMPLE_MODES if m != "auto" for case in MODE_CASES]
    + [("bk", *case) for case in BK_CASES],
)
def test_every_mode_clips_each_sample_like_single_sample_backward(mode, task, trainable, size):
    """The noiseless DP gradient equals Σ_i clip(g_i)/B with each g_i from its own backward pass:
    per-sample independence (segmentation's per-image loss included) in every mode."""
    _, _, _, _, singles, norms = _reference(task, trainable, size)
    clip = float(norms.median())  # one sample clipped, one not, one at the edge: both branches
    expected = _clipped_mean_by_hand(singles, norms, clip)
    got = _one_private_step(mode, task, trainable, size, clip)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=2e-4, atol=2e-6)


def test_auto_mode_is_book_keeping_and_unknown_modes_are_refused():
    assert resolve_grad_sample_mode("auto") == "bk"
    with pytest.raises(ValueError, match="grad_sample_mode='fast' is unknown; valid: auto, hooks"):
        resolve_grad_sample_mode("fast")


def test_ghost_norm_and_per_sample_norm_agree_on_every_layer():
    """Both exact methods of the per-layer choice give the same norms (the choice changes cost only)."""
    model, x, y, _, _, _ = _reference("classification", "all", 32)
    layers, acts = [], {}
    hooks = [m.register_forward_hook(lambda m, i, o: acts.__setitem__(m, (i[0].detach(), o)))
             for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    loss = task_loss("classification", model(x), y).sum()
    for h in hooks:
        h.remove()
    layers = list(acts)
    backprops = torch.autograd.grad(loss, [acts[m][1] for m in layers])
    methods = set()
    for m, b in zip(layers, backprops):
        a = acts[m][0]
        ghost = per_sample_sq_norms(m, a, b, chunk_bytes=2**20, method=GHOST)
        direct = per_sample_sq_norms(m, a, b, chunk_bytes=2**20, method=PER_SAMPLE)
        torch.testing.assert_close(ghost, direct, rtol=1e-4, atol=1e-8)
        methods.add(norm_method(m, b))
    assert methods == {GHOST, PER_SAMPLE}  # at 32 px the early convs go per-sample, the late ones ghost


def test_book_keeping_runs_consecutive_steps_and_an_empty_poisson_batch():
    model, x, y, _, _, _ = _reference("classification", "all", 32)
    import copy

    model = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    private = make_private(
        PrivacyEngine(accountant="rdp"), model=model, optimizer=torch.optim.SGD(params, lr=0.0),
        loader=DataLoader(TensorDataset(x, y), batch_size=B), noise_multiplier=1.0, max_grad_norm=1.0,
        mode="bk", chunk_mib=1,
    )
    for batch in (slice(0, B), slice(0, 0), slice(0, B)):  # steps before and after the empty one run too
        private.optimizer.zero_grad(set_to_none=True)
        private.backward(task_loss("classification", private.model(x[batch]), y[batch]))
        private.optimizer.step()
        # The update is never skipped; with no sample it is pure noise N(0, σ²C²)/B (and accounted).
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert private.optimizer.accumulated_iterations == 1
