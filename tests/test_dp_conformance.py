"""No BatchNorm, no in-place op and no in-place residual add survive in the DP models."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.models import resnet18

from common.models import build_model, find_dp_violations, make_dp_conformant
from common.models.dp_conformance import DPBasicBlock


class _RecordInplace(TorchDispatchMode):
    """Records every in-place aten op (add_, relu_, ...) that a forward pass runs."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name.endswith("_") and not name.startswith("_"):
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def _inplace_ops(model: nn.Module, x: torch.Tensor) -> list[str]:
    with _RecordInplace() as rec:
        model(x)
    return rec.ops


@pytest.mark.parametrize("model_name", ["resnet18", "unet_resnet18", "small_cnn"])
def test_configured_models_are_dp_conformant(tiny_config, model_name):
    cfg = tiny_config(f"model={model_name}")
    model = build_model(cfg.model)
    assert find_dp_violations(model) == []
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    assert ModuleValidator.is_valid(model)


@pytest.mark.parametrize("task,size", [("classification", 32), ("segmentation", 64)])
def test_forward_runs_no_inplace_op(tiny_config, task, size):
    model = build_model(tiny_config(f"task={task}").model).train()
    assert _inplace_ops(model, torch.randn(2, 1, size, size)) == []
    assert any(isinstance(m, DPBasicBlock) for m in model.modules())
    # The same recorder sees torchvision's `out += identity` and ReLU(inplace): it can fail.
    assert {"add_", "relu_"} <= set(_inplace_ops(resnet18(num_classes=1), torch.randn(2, 3, 32, 32)))


def test_opacus_fix_alone_is_not_enough():
    fixed_only = ModuleValidator.fix(resnet18(num_classes=1))
    problems = find_dp_violations(fixed_only)
    assert any("inplace" in p for p in problems)
    assert any("adds the residual in place" in p for p in problems)


def test_make_dp_conformant_keeps_weights_and_output():
    torch.manual_seed(0)
    model = ModuleValidator.fix(resnet18(num_classes=1)).eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    after = make_dp_conformant(model).eval()(x)
    torch.testing.assert_close(before, after)


@pytest.mark.parametrize("model_name,size", [("resnet18", 32), ("unet_resnet18", 64)])
def test_opacus_hooks_run_backward(tiny_config, model_name, size):
    cfg = tiny_config(f"model={model_name}")
    model = GradSampleModule(build_model(cfg.model))
    out = model(torch.randn(3, 1, size, size))
    out.sum().backward()
    assert all(p.grad_sample.shape[0] == 3 for p in model.parameters() if p.requires_grad)
