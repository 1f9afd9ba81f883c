"""segmentation-models-pytorch UNet with a ResNet encoder."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def build_unet(
    *,
    encoder_name: str = "resnet18",
    in_channels: int = 1,
    num_classes: int = 3,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
) -> nn.Module:
    """Build a randomly initialised smp UNet (``encoder_weights=None``: no downloads).

    Parameters
    ----------
    encoder_name : str
        Any smp ResNet encoder, e.g. ``resnet18``.
    in_channels : int
        Image channels (1 for CT/MRI slices).
    num_classes : int
        Output channels, background included (3 = background, organ, lesion).
    decoder_channels : Sequence[int]
        One width per decoder stage (five stages).
    """
    import segmentation_models_pytorch as smp  # only UNet tasks pay for importing smp (and timm)

    return smp.Unet(
        encoder_name=encoder_name,
        encoder_weights=None,
        in_channels=in_channels,
        classes=num_classes,
        decoder_channels=tuple(decoder_channels),
    )
