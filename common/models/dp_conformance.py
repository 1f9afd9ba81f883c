"""Make torchvision / segmentation-models-pytorch networks safe for Opacus DP-SGD.

Three things break DP-SGD in off-the-shelf networks:

1. BatchNorm mixes samples of a batch, so a per-sample gradient is not per-sample any
   more (and frozen BN still updates running stats from private data in train mode).
   Opacus' ``ModuleValidator.fix`` swaps it for GroupNorm.
2. In-place activations (``ReLU(inplace=True)``) overwrite the tensors that Opacus'
   backward hooks hand out as views.
3. torchvision's residual blocks do ``out += identity`` right after a hooked layer, which
   raises "Output 0 of BackwardHookFunction is a view and is being modified inplace"
   on torch 2.x. smp's ResNet encoders reuse these blocks.
"""

from __future__ import annotations

import torch
from opacus.validators import ModuleValidator
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck


class DPBasicBlock(BasicBlock):
    """torchvision ``BasicBlock`` with an out-of-place residual add."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class DPBottleneck(Bottleneck):
    """torchvision ``Bottleneck`` with an out-of-place residual add."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_SAFE_BLOCKS: dict[type[nn.Module], type[nn.Module]] = {
    BasicBlock: DPBasicBlock,
    Bottleneck: DPBottleneck,
}


def make_dp_conformant(model: nn.Module) -> nn.Module:
    """Return ``model`` rewritten so that Opacus computes true per-sample gradients.

    Parameters
    ----------
    model : nn.Module
        Any torch model; torchvision ResNets and smp UNets are handled fully.

    Returns
    -------
    nn.Module
        The fixed model (a new object when BatchNorm had to be replaced).

    Raises
    ------
    ValueError
        If the fixed model still has a layer Opacus cannot privatise.
    """
    for module in model.modules():
        # Swapping the class keeps the block's weights and submodules; only forward changes.
        safe = _SAFE_BLOCKS.get(type(module))
        if safe is not None:
            module.__class__ = safe
        if getattr(module, "inplace", False):
            module.inplace = False
    model = ModuleValidator.fix(model)
    remaining = find_dp_violations(model)
    if remaining:
        raise ValueError("model is not DP-conformant after fixing: " + "; ".join(remaining))
    return model


def find_dp_violations(model: nn.Module) -> list[str]:
    """List every reason ``model`` is unsafe for DP-SGD (empty when it is safe).

    Checks for batch-mixing normalisation, in-place modules, torchvision residual
    blocks with an in-place add, and anything Opacus' own validator rejects.
    """
    problems: list[str] = []
    for name, module in model.named_modules():
        label = name or "<root>"
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            problems.append(f"{label}: {type(module).__name__} mixes samples of a batch")
        if getattr(module, "inplace", False):
            problems.append(f"{label}: {type(module).__name__}(inplace=True)")
        if type(module) in _SAFE_BLOCKS:
            problems.append(f"{label}: torchvision {type(module).__name__} adds the residual in place")
    # Opacus' validator also insists on train mode; that is a state, not a property of the model.
    was_training = model.training
    problems.extend(str(err) for err in ModuleValidator.validate(model.train(), strict=False))
    model.train(was_training)
    return sorted(set(problems))
