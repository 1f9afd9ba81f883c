"""Per-sample losses: each returns shape ``[B]`` so DP-SGD can clip sample by sample.

A loss that reduces over the batch before the per-sample step (for example
``smp.losses.DiceLoss``, which sums intersections over the whole batch) makes sample
i's gradient depend on sample j, and per-sample clipping then no longer bounds one
patient's influence: DP silently breaks. Reduce with ``.mean()`` only afterwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_sample_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy per sample: logits ``[B, 1]`` or ``[B]``, targets ``[B]`` -> ``[B]``."""
    return F.binary_cross_entropy_with_logits(logits.reshape(-1), targets.float(), reduction="none")


def per_image_dice_ce(
    logits: torch.Tensor,
    masks: torch.Tensor,
    *,
    class_weights: list[float] | None = None,
    smooth: float = 1.0,
) -> torch.Tensor:
    """Soft multi-class Dice loss plus cross-entropy, computed per image.

    Parameters
    ----------
    logits : torch.Tensor
        ``[B, C, H, W]`` raw scores, class 0 is background.
    masks : torch.Tensor
        ``[B, H, W]`` integer labels.
    class_weights : list of float, optional
        Cross-entropy weight per class (fixed in config, never estimated from private
        data): small lesions need more weight than background to be learned at all.
    smooth : float
        Added to numerator and denominator so empty classes give a finite loss.

    Returns
    -------
    torch.Tensor
        ``[B]``: mean over foreground classes of (1 - Dice), plus the image's mean CE.
    """
    num_classes = logits.shape[1]
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(masks.long(), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (2, 3)  # sum over pixels of one image only, never over the batch
    intersection = (probs * onehot).sum(dims)
    cardinality = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + smooth) / (cardinality + smooth)
    dice_loss = (1 - dice[:, 1:]).mean(dim=1)
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
    ce = F.cross_entropy(logits, masks.long(), weight=weight, reduction="none").mean(dim=(1, 2))
    return dice_loss + ce


def task_loss(
    task: str, outputs: torch.Tensor, targets: torch.Tensor, *, class_weights: list[float] | None = None
) -> torch.Tensor:
    """The per-sample loss of ``task`` (``classification`` or ``segmentation``), shape ``[B]``."""
    if task == "classification":
        return per_sample_bce(outputs, targets)
    if task == "segmentation":
        return per_image_dice_ce(outputs, targets, class_weights=class_weights)
    raise ValueError(f"task must be 'classification' or 'segmentation', got {task!r}")
