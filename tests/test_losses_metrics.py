"""Per-sample losses and the AUC / Dice metrics against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from common.losses import per_image_dice_ce, per_sample_bce, task_loss
from common.metrics import binary_auc, dice_from_stats, dice_stats


def test_losses_are_per_sample():
    assert per_sample_bce(torch.randn(5, 1), torch.ones(5)).shape == (5,)
    assert per_image_dice_ce(torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4, 8, 8))).shape == (4,)


def test_dice_loss_of_one_image_ignores_the_others():
    logits, masks = torch.randn(3, 3, 8, 8), torch.randint(0, 3, (3, 8, 8))
    full = per_image_dice_ce(logits, masks)
    alone = per_image_dice_ce(logits[:1], masks[:1])
    logits2 = logits.clone()
    logits2[1:] = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(full[0], alone[0])
    torch.testing.assert_close(per_image_dice_ce(logits2, masks)[0], full[0])


def test_perfect_segmentation_has_near_zero_dice_loss():
    masks = torch.randint(0, 3, (2, 16, 16))
    logits = torch.nn.functional.one_hot(masks, 3).permute(0, 3, 1, 2).float() * 50
    assert per_image_dice_ce(logits, masks).max() < 0.05


def test_class_weights_change_the_loss():
    logits, masks = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    assert not torch.allclose(
        per_image_dice_ce(logits, masks), per_image_dice_ce(logits, masks, class_weights=[0.1, 1.0, 5.0])
    )


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="'detection'"):
        task_loss("detection", torch.zeros(1), torch.zeros(1))


def test_auc_matches_sklearn_and_handles_one_class():
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, 100), rng.random(100)
    assert binary_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert np.isnan(binary_auc(scores, np.ones(100)))


def test_dice_matches_manual_count():
    masks = torch.randint(0, 3, (4, 16, 16))
    logits = torch.randn(4, 3, 16, 16)
    pred = logits.argmax(1)
    dice = dice_from_stats(dice_stats(logits, masks))
    for c in range(3):
        tp = ((pred == c) & (masks == c)).sum().item()
        expected = 2 * tp / ((pred == c).sum().item() + (masks == c).sum().item())
        assert dice[c] == pytest.approx(expected)


def test_dice_of_absent_class_is_nan():
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    logits = torch.zeros(2, 3, 8, 8)
    logits[:, 0] = 1.0
    assert np.isnan(dice_from_stats(dice_stats(logits, masks))[2])
