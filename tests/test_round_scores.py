"""The per-round white-box membership score separates included from excluded canaries (positive control)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from common.audit.round_scores import CountSketch, canary_gradients, flat_update, residual_alignment, standardised
from common.losses import task_loss


def _one_site_rounds(rounds: int, *, sketch_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A tiny undefended site: 100 patients and a random half of 40 out-of-distribution canaries (random labels), two SGD steps a round."""
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(100, 1, 8, 8, generator=gen) + 0.5
    labels = (data.mean((1, 2, 3)) > 0.5).float()
    canaries = 3 * torch.randn(40, 1, 8, 8, generator=gen)
    canary_labels = torch.randint(0, 2, (40,), generator=gen).float()
    included = np.random.default_rng(0).random(40) < 0.5
    x = torch.cat([data, canaries[torch.as_tensor(included)]])
    y = torch.cat([labels, canary_labels[torch.as_tensor(included)]])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 1))
    keys = [k for k, _ in model.named_parameters()]
    sketch = CountSketch(sum(p.numel() for p in model.parameters()), sketch_dim, seed=0)
    total = np.zeros(40)
    for _ in range(rounds):
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        grads = canary_gradients(model, keys, canaries, canary_labels, task="classification", sketch=sketch)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for batch in torch.randperm(len(y)).split(60):
            opt.zero_grad()
            task_loss("classification", model(x[batch]), y[batch]).mean().backward()
            opt.step()
        update = sketch(flat_update(before, model.state_dict(), keys))
        total += standardised(residual_alignment(grads, update, components=2))
    return total, included


@pytest.mark.parametrize("sketch_dim", [100_000, 4096])  # identity (exact) and a real sketch
def test_round_score_separates_included_canaries(sketch_dim):
    scores, included = _one_site_rounds(10, sketch_dim=sketch_dim)
    assert roc_auc_score(included, scores) >= 0.8
    # Able to fail: against a random membership the same scores are near chance.
    shuffled = np.random.default_rng(1).permutation(included)
    assert roc_auc_score(shuffled, scores) < 0.65


def test_components_out_of_range_is_refused():
    with pytest.raises(ValueError, match="audit.components"):
        residual_alignment(torch.zeros(4, 3), torch.zeros(3), components=3)
