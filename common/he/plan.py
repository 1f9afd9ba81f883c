"""What the server evaluates under encryption: a trained ``he_cnn`` reduced to plain arrays.

A ``he_cnn`` is ``conv -> square -> [linear layers]``. Everything after the square is linear
(average pooling, flatten, the head), so it folds into one affine map from the squared
convolution output to the logit: its weights are the map applied to each unit vector, its bias
the map applied to zero. The plan keeps those arrays and the geometry the clinic needs to
encode an image; it never leaves the server except as the public geometry (:meth:`HEPlan.public`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from common.models.he_cnn import Square, conv_output_side

# The multiplications of one encrypted evaluation, in order: convolution (by the plaintext
# kernel), square (ciphertext by ciphertext), head (by plaintext weights), the mask that keeps
# only the logit's slot (by a plaintext). Each uses one level; the clinic replays this schedule
# on a probe to know the exact scale and level an honest reply has (common/he/keys.py).
HE_SCHEDULE = ("plain", "square", "plain", "plain")
HE_DEPTH = len(HE_SCHEDULE)
# Modules that may follow the square: all linear (or identity at inference).
_LINEAR_TAIL = (nn.AvgPool2d, nn.Flatten, nn.Linear, nn.Identity, nn.Dropout)


class NotHEEvaluableError(ValueError):
    """A model that encrypted inference cannot evaluate (only ``model=he_cnn`` can)."""


def _pow2_at_least(n: int) -> int:
    return 1 << (n - 1).bit_length()


@dataclass(frozen=True)
class HEPlan:
    """Arrays and geometry of one ``he_cnn`` for encrypted evaluation.

    ``kernels[c]`` is filter c (``k x k``), ``conv_bias[c]`` its bias, ``head[c]`` the folded
    head weights of channel c over the ``windows`` convolution outputs (row-major, as TenSEAL's
    im2col orders windows), ``head_bias`` the folded bias.
    """

    image_size: int
    kernel_size: int
    stride: int
    kernels: np.ndarray
    conv_bias: np.ndarray
    head: np.ndarray
    head_bias: float

    @property
    def channels(self) -> int:
        return int(self.kernels.shape[0])

    @property
    def windows(self) -> int:
        """Convolution windows per image (the im2col encoding's rows)."""
        return conv_output_side(self.image_size, self.kernel_size, self.stride) ** 2

    @property
    def slots(self) -> int:
        """CKKS slots of one encoded image: windows x the window size padded to a power of two."""
        return self.windows * _pow2_at_least(self.kernel_size**2)

    @property
    def depth(self) -> int:
        return HE_DEPTH

    def public(self) -> dict[str, int]:
        """The geometry a clinic needs to encode an image (architecture config values, no weights)."""
        return {
            "image_size": self.image_size,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "channels": self.channels,
            "windows": self.windows,
            "slots": self.slots,
            "depth": self.depth,
        }


def plan_from_model(model: nn.Module, *, image_size: int) -> HEPlan:
    """Reduce a trained ``he_cnn`` to an :class:`HEPlan` for ``image_size`` square inputs.

    Parameters
    ----------
    model : nn.Module
        ``nn.Sequential(Conv2d, Square, *linear layers)`` as built by ``model=he_cnn``.
    image_size : int
        Input side the model was trained on (``task.image_size``).

    Raises
    ------
    NotHEEvaluableError
        If the model is not of that form, or does not take ``image_size`` inputs.
    """
    layers = list(model.children()) if isinstance(model, nn.Sequential) else []
    if len(layers) < 3 or not isinstance(layers[0], nn.Conv2d) or not isinstance(layers[1], Square):
        kinds = [type(m).__name__ for m in layers] or [type(model).__name__]
        raise NotHEEvaluableError(
            f"encrypted inference evaluates model=he_cnn (Conv2d, Square, linear head), got {kinds}"
        )
    conv, tail = layers[0], nn.Sequential(*layers[2:]).eval()
    for index, layer in enumerate(layers[2:], start=2):
        if not isinstance(layer, _LINEAR_TAIL):
            raise NotHEEvaluableError(f"layer {index} ({type(layer).__name__}) after the square is not linear")
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    if (conv.in_channels, conv.groups, conv.dilation, conv.padding) != (1, 1, (1, 1), (0, 0)) or kh != kw or sh != sw:
        raise NotHEEvaluableError(
            "the convolution must have one input channel, a square kernel, equal strides, no padding, dilation "
            f"or groups; got {conv}"
        )
    side = conv_output_side(image_size, kh, sh)
    n = conv.out_channels * side * side
    try:
        with torch.no_grad():
            bias = tail(torch.zeros(1, conv.out_channels, side, side))
            weights = tail(torch.eye(n, dtype=bias.dtype).view(n, conv.out_channels, side, side)) - bias
    except RuntimeError as err:
        raise NotHEEvaluableError(f"the model's head does not take {image_size} px inputs ({err})") from err
    if bias.numel() != 1:
        raise NotHEEvaluableError(f"encrypted inference returns one logit, the model has {bias.numel()} outputs")
    conv_bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
    return HEPlan(
        image_size=int(image_size),
        kernel_size=int(kh),
        stride=int(sh),
        kernels=conv.weight.detach()[:, 0].double().numpy().copy(),
        conv_bias=conv_bias.double().numpy().copy(),
        head=weights[:, 0].reshape(conv.out_channels, side * side).double().numpy().copy(),
        head_bias=float(bias.item()),
    )
