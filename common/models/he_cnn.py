"""A classifier that homomorphic encryption can evaluate: convolution, square, linear head.

CKKS (TenSEAL) evaluates additions and multiplications only, and each multiplication uses
up one level of the ciphertext's modulus chain. So the network is a polynomial of low degree
(CryptoNets, Gilad-Bachrach et al. 2016; TenSEAL's encrypted-convolution tutorial):

1. one convolution without padding (TenSEAL's im2col encoding evaluates it on one ciphertext),
2. the square activation ``x * x`` (one ciphertext-ciphertext multiplication),
3. average pooling and a linear head: both linear, so inference folds them into one
   affine map (``common/he/plan.py``) while DP-SGD trains only the pooled head, which keeps
   the number of noised coordinates small.

No normalisation layer: GroupNorm divides by a data-dependent standard deviation, which is
not a polynomial. Inputs are standardised per image by the readers, which keeps the square
of the convolution in range.
"""

from __future__ import annotations

import torch
from torch import nn


class Square(nn.Module):
    """``x * x`` (out of place, so Opacus' hooks see an untouched input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def conv_output_side(image_size: int, kernel_size: int, stride: int) -> int:
    """Side of an unpadded convolution's output: the im2col window count per row."""
    return (image_size - kernel_size) // stride + 1


def build_he_cnn(
    *,
    image_size: int,
    in_channels: int = 1,
    num_outputs: int = 1,
    channels: int = 8,
    kernel_size: int = 4,
    stride: int = 2,
    pool: int = 1,
) -> nn.Sequential:
    """Build ``conv -> square -> avgpool -> flatten -> fc`` for ``image_size`` square inputs.

    Parameters
    ----------
    image_size : int
        Side of the (square) input; the head's width depends on it.
    channels : int
        Convolution filters (one encrypted convolution each at inference).
    kernel_size, stride : int
        Unpadded convolution geometry.
    pool : int
        Average-pooling window and stride over the convolution's output (1: none); must
        divide the output side.

    Raises
    ------
    ValueError
        If the geometry does not fit the image.
    """
    for name, value in (("image_size", image_size), ("channels", channels), ("kernel_size", kernel_size),
                        ("stride", stride), ("pool", pool), ("in_channels", in_channels),
                        ("num_outputs", num_outputs)):
        if int(value) < 1:
            raise ValueError(f"he_cnn {name} must be >= 1, got {value}")
    if kernel_size > image_size:
        raise ValueError(f"he_cnn kernel_size={kernel_size} is larger than image_size={image_size}")
    side = conv_output_side(image_size, kernel_size, stride)
    if side % pool:
        raise ValueError(
            f"he_cnn pool={pool} must divide the convolution's output side {side} "
            f"(image_size={image_size}, kernel_size={kernel_size}, stride={stride})"
        )
    pooled = side // pool
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, kernel_size=kernel_size, stride=stride),
        Square(),
        nn.AvgPool2d(pool),
        nn.Flatten(),
        nn.Linear(channels * pooled * pooled, num_outputs),
    )
