"""torchvision ResNet classifier for single-channel medical images."""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet18, resnet34, resnet50

_RESNETS = {18: resnet18, 34: resnet34, 50: resnet50}


def build_resnet(*, depth: int = 18, in_channels: int = 1, num_outputs: int = 1) -> nn.Module:
    """Build a randomly initialised torchvision ResNet.

    Parameters
    ----------
    depth : int
        18, 34 or 50.
    in_channels : int
        Image channels (1 for X-ray); replaces the RGB stem.
    num_outputs : int
        Logits; 1 for binary classification with a sigmoid.
    """
    if depth not in _RESNETS:
        raise ValueError(f"resnet depth must be one of {sorted(_RESNETS)}, got {depth}")
    # weights=None: nothing may be downloaded at run time, and public ImageNet weights
    # would be a different model from the one the privacy analysis describes.
    model = _RESNETS[depth](weights=None, num_classes=num_outputs)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model
