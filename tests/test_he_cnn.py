"""model=he_cnn: a polynomial network (conv, square, pooled linear head) that DP-SGD can train."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule

from common.losses import task_loss
from common.models import build_model, find_dp_violations
from common.models.he_cnn import Square, build_he_cnn


def test_configured_he_cnn_is_dp_conformant_small_and_polynomial(tiny_config):
    cfg = tiny_config("model=he_cnn")
    model = build_model(cfg.model)
    assert find_dp_violations(model) == []
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Conv2d", "Square", "AvgPool2d", "Flatten", "Linear"]
    # No normalisation: GroupNorm's division by a data-dependent std is not a polynomial.
    assert not any(isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) < 1000
    assert model(torch.randn(2, 1, cfg.task.image_size, cfg.task.image_size)).shape == (2, 1)


def test_square_is_out_of_place():
    x = torch.randn(3, requires_grad=True)
    y = Square()(x)
    assert torch.equal(y, x * x) and y.data_ptr() != x.data_ptr()


def test_per_sample_gradients_match_one_at_a_time(tiny_config):
    cfg = tiny_config("model=he_cnn")
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    size = cfg.task.image_size
    x, y = torch.randn(3, 1, size, size), torch.tensor([0.0, 1.0, 1.0])
    gsm = GradSampleModule(model, loss_reduction="mean")
    task_loss("classification", gsm(x), y).mean().backward()
    per_sample = [p.grad_sample.detach().clone() for p in model.parameters()]
    gsm._close()
    for i in range(3):
        model.zero_grad()
        task_loss("classification", model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        for p, gs in zip(model.parameters(), per_sample):
            torch.testing.assert_close(gs[i], p.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(image_size=32, kernel_size=40), "larger than image_size"),
        (dict(image_size=32, pool=4), "pool=4 must divide the convolution's output side 15"),
        (dict(image_size=32, channels=0), "channels must be >= 1"),
    ],
)
def test_impossible_geometry_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_he_cnn(**kwargs)
