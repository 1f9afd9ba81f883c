"""The plan the server evaluates equals the trained model, computed independently of torch's layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.he.plan import HE_DEPTH, NotHEEvaluableError, plan_from_model
from common.models import make_dp_conformant
from common.models.he_cnn import build_he_cnn
from common.models.resnet import build_resnet
from common.models.small_cnn import build_small_cnn

# conf/model/he_cnn.yaml at the default 32 px (tests/test_he_cnn.py composes the config itself).
DEFAULT_GEOMETRY = dict(image_size=32, channels=8, kernel_size=4, stride=2, pool=3)


def _he_model():
    torch.manual_seed(3)
    return make_dp_conformant(build_he_cnn(**DEFAULT_GEOMETRY)).eval(), DEFAULT_GEOMETRY["image_size"]


def _plan_logit(plan, image: np.ndarray) -> float:
    """conv -> square -> folded head with explicit loops over the windows (row-major, as im2col)."""
    side = (plan.image_size - plan.kernel_size) // plan.stride + 1
    k, s = plan.kernel_size, plan.stride
    total = plan.head_bias
    for c in range(plan.channels):
        for w in range(side * side):
            row, col = divmod(w, side)
            patch = image[row * s : row * s + k, col * s : col * s + k]
            total += plan.head[c, w] * (float((patch * plan.kernels[c]).sum()) + plan.conv_bias[c]) ** 2
    return total


def test_folded_plan_equals_the_model():
    model, size = _he_model()
    plan = plan_from_model(model, image_size=size)
    assert plan.public() == {"image_size": 32, "kernel_size": 4, "stride": 2, "channels": 8, "windows": 225,
                             "slots": 3600, "depth": HE_DEPTH}
    rng = np.random.default_rng(0)
    for _ in range(3):
        image = rng.standard_normal((size, size))
        with torch.no_grad():
            expected = model(torch.from_numpy(image).float()[None, None]).item()
        assert _plan_logit(plan, image) == pytest.approx(expected, abs=1e-4)


def test_public_geometry_carries_no_weights():
    model, size = _he_model()
    assert all(isinstance(v, int) for v in plan_from_model(model, image_size=size).public().values())


@pytest.mark.parametrize("build", [build_small_cnn, build_resnet])
def test_other_models_are_refused(build):
    model = make_dp_conformant(build())
    with pytest.raises(NotHEEvaluableError, match="evaluates model=he_cnn"):
        plan_from_model(model, image_size=32)


def test_wrong_input_size_is_refused():
    model, _ = _he_model()
    with pytest.raises(NotHEEvaluableError, match="does not take 64 px inputs"):
        plan_from_model(model, image_size=64)
    model[4] = torch.nn.Linear(model[4].in_features, 2)
    with pytest.raises(NotHEEvaluableError, match="one logit, the model has 2 outputs"):
        plan_from_model(model, image_size=32)
    model[2] = torch.nn.ReLU()
    with pytest.raises(NotHEEvaluableError, match="layer 2 \\(ReLU\\) after the square is not linear"):
        plan_from_model(model, image_size=32)
