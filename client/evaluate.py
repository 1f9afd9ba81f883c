"""Evaluate a model on a site's local test set (pure torch)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common.losses import task_loss
from common.metrics import binary_auc, dice_from_stats, dice_stats


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    task: str,
    batch_size: int,
    device: torch.device,
    class_names: list[str] | None = None,
) -> dict[str, float]:
    """Loss and the task metric on ``dataset``.

    Returns
    -------
    dict
        ``loss`` and ``num-examples``; ``auc`` for classification; ``dice`` (mean over
        foreground classes) and ``dice.<class name>`` per foreground class for segmentation.
    """
    model = model.to(device).eval()
    losses, scores, labels, stats = [], [], [], None
    for images, targets in DataLoader(dataset, batch_size=batch_size):
        images, targets = images.to(device), targets.to(device)
        outputs = model(images)
        losses.append(task_loss(task, outputs, targets).cpu())
        if task == "classification":
            scores.append(outputs.reshape(-1).cpu())
            labels.append(targets.cpu())
        else:
            batch_stats = dice_stats(outputs.cpu(), targets.cpu())
            stats = batch_stats if stats is None else stats + batch_stats
    metrics = {"loss": float(torch.cat(losses).mean()), "num-examples": float(len(dataset))}
    if task == "classification":
        metrics["auc"] = binary_auc(torch.cat(scores).numpy(), torch.cat(labels).numpy())
    else:
        per_class = dice_from_stats(stats)[1:]
        metrics["dice"] = float(np.nanmean(per_class)) if not np.isnan(per_class).all() else float("nan")
        for k, value in enumerate(per_class, start=1):
            name = class_names[k] if class_names and k < len(class_names) else f"class{k}"
            metrics[f"dice.{name}"] = float(value)
    return metrics
