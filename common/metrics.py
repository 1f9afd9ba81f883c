"""Evaluation metrics: ROC AUC (scikit-learn) and Dice (segmentation-models-pytorch)."""

from __future__ import annotations

import numpy as np
import torch

# smp and scikit-learn are imported where used: a deployed ClientApp starts a fresh process for
# every message, and these imports cost seconds each time for a task that may not need them.


def binary_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of ``scores`` for binary ``labels``; NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def dice_stats(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """True/false positive and false negative pixel counts per class, summed over the batch.

    Returns
    -------
    torch.Tensor
        ``[3, C]`` int64: rows tp, fp, fn. Summing these over batches (and sites) gives
        dataset-level Dice without keeping predictions around.
    """
    import segmentation_models_pytorch as smp

    num_classes = logits.shape[1]
    tp, fp, fn, _ = smp.metrics.get_stats(
        logits.argmax(dim=1), masks.long(), mode="multiclass", num_classes=num_classes
    )
    return torch.stack([tp.sum(0), fp.sum(0), fn.sum(0)])


def dice_from_stats(stats: torch.Tensor) -> np.ndarray:
    """Per-class Dice ``2tp / (2tp + fp + fn)`` from :func:`dice_stats` counts (NaN if absent)."""
    tp, fp, fn = (s.double() for s in stats)
    denom = 2 * tp + fp + fn
    dice = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.full_like(denom, float("nan")))
    return dice.numpy()
