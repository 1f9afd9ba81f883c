"""SecAgg+ parameters, the site's clipped update, and the coordinator's noise on the unmasked mean."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from omegaconf import OmegaConf

from client.secure_update import UpdateRejected, secure_update, update_norm
from common.federation_config import ConfigError, validate_config
from common.secagg_params import default_num_shares, secagg_params
from server.client_privacy import client_accountant
from server.round_tracker import RoundTracker
from server.secure_aggregation import SecureDpFedAvg


def _agg(**overrides):
    base = dict(
        name="secaggplus",
        num_shares=None,
        reconstruction_threshold=None,
        clipping_range=None,
        quantization_range=4194304,
        modulus_range=4294967296,
        timeout_s=60,
    )
    return OmegaConf.create({**base, **overrides})


def test_defaults_follow_the_number_of_sites():
    three = secagg_params(_agg(), num_sites=3, client_clip_norm=None)
    assert (three.num_shares, three.reconstruction_threshold, three.clipping_range) == (3, 2, 8.0)
    assert secagg_params(_agg(), num_sites=3, client_clip_norm=2.5).clipping_range == 2.5
    five = secagg_params(_agg(), num_sites=5, client_clip_norm=None)
    assert (five.num_shares, five.reconstruction_threshold) == (5, 4)
    many = secagg_params(_agg(), num_sites=200, client_clip_norm=None)
    assert many.num_shares == default_num_shares(200) == 23 and many.num_shares % 2 == 1
    assert many.num_shares / 2 < many.reconstruction_threshold < many.num_shares


@pytest.mark.parametrize(
    ("overrides", "clip", "message"),
    [
        (dict(num_shares=3, reconstruction_threshold=3), None, "must be less than num_shares=3"),
        (dict(num_shares=3, reconstruction_threshold=4), None, "must be less than num_shares=3"),
        (dict(num_shares=5, reconstruction_threshold=2), None, "more than half"),
        (dict(num_shares=7), None, r"num_shares=7 must be in \[3, sites=5\]"),
        (dict(num_shares=2), None, "num_shares=2 must be in"),
        (dict(clipping_range=0.5), 1.0, "would saturate"),
        (dict(modulus_range=2**24), None, "wrap around"),
        (dict(modulus_range=3 * 2**30), None, "power of 2"),
        (dict(timeout_s=0), None, "bounded wait"),
    ],
)
def test_invalid_parameters_are_rejected_with_the_key(overrides, clip, message):
    with pytest.raises(ConfigError, match=message):
        secagg_params(_agg(**overrides), num_sites=5, client_clip_norm=clip)


def test_composed_configs_are_validated_up_front(tiny_config):
    validate_config(tiny_config("aggregation=secaggplus", "strategy=dp_fedavg"))
    with pytest.raises(ConfigError, match="reconstruction_threshold=3 must be less than num_shares=3"):
        validate_config(tiny_config("aggregation=secaggplus", "aggregation.reconstruction_threshold=3"))
    with pytest.raises(ConfigError, match="adaptive clipping.*cannot run with aggregation=secaggplus"):
        validate_config(tiny_config("aggregation=secaggplus", "strategy=dp_fedavg_adaptive"))
    with pytest.raises(ConfigError, match="clipping_range=0.5 is below the client-level clipping norm 1"):
        validate_config(tiny_config("aggregation=secaggplus", "strategy=dp_fedavg", "aggregation.clipping_range=0.5"))


def _state(*values):
    return OrderedDict((f"w{i}", torch.tensor(v, dtype=torch.float32)) for i, v in enumerate(values))


def test_site_clips_its_whole_update_to_the_norm():
    global_ = _state([0.0, 0.0], [1.0])
    local = _state([3.0, 0.0], [5.0])  # Δ = (3, 0, 4): norm 5
    update, norm = secure_update(local, global_, clip_norm=1.0, clipping_range=8.0, site="a")
    assert norm == pytest.approx(5.0)
    assert update_norm(update) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(update["w0"], torch.tensor([0.6, 0.0])) and torch.allclose(update["w1"], torch.tensor([0.8]))
    # Below the norm nothing changes; without client-level DP nothing is clipped.
    small, _ = secure_update(local, global_, clip_norm=10.0, clipping_range=8.0, site="a")
    assert torch.allclose(small["w1"], torch.tensor([4.0]))


def test_site_refuses_updates_it_cannot_send_faithfully():
    global_ = _state([0.0, 0.0])
    with pytest.raises(UpdateRejected, match="site a: update of w0 has NaN"):
        secure_update(_state([float("nan"), 0.0]), global_, clip_norm=1.0, clipping_range=8.0, site="a")
    with pytest.raises(UpdateRejected, match="magnitude 9 exceeds aggregation.clipping_range=8"):
        secure_update(_state([9.0, 0.0]), global_, clip_norm=None, clipping_range=8.0, site="a")


class _ListSink:
    def log_site_params(self, params):
        pass

    def log_round(self, server_round, metrics):
        pass


def _site_metrics(index):
    return {"site-index": index, "eps-sample": 1.0, "noise-multiplier": 1.0, "sample-rate": 0.1, "uniform-weight": 1.0,
            "steps": 3.0}


@pytest.mark.parametrize("survivors", [2, 5])
def test_noise_is_calibrated_to_the_sites_actually_aggregated(survivors):
    """Std z·C on the sum: z·C/m on the mean of the m sites left after dropouts."""
    d, z, c = 200_000, 1.3, 0.5
    dp = OmegaConf.create({"noise_multiplier": z, "clipping_norm": c, "delta": 1e-3, "max_epsilon": 100.0})
    strategy = SecureDpFedAvg(
        initial=OrderedDict(w=np.zeros(d, dtype=np.float32)),
        round_config={},
        params=secagg_params(_agg(), num_sites=5, client_clip_norm=c),
        num_sites=5,
        tracker=RoundTracker(sites=[f"s{i}" for i in range(5)], metric="auc", sink=_ListSink()),
        client_dp=dp,
        accountant=client_accountant(num_sites=5, delta=1e-3, max_epsilon=100.0),
    )
    mean = ndarrays_to_parameters([np.full(d, 0.1, dtype=np.float32)])
    results = [(None, FitRes(Status(Code.OK, ""), mean, 1, _site_metrics(i))) for i in range(survivors)]
    new, metrics = strategy.aggregate_fit(1, results, [])
    noise = parameters_to_ndarrays(new)[0].astype(np.float64) - 0.1
    assert metrics["sites_aggregated"] == survivors
    assert noise.mean() == pytest.approx(0.0, abs=5 * z * c / survivors / np.sqrt(d))
    assert noise.std() == pytest.approx(z * c / survivors, rel=0.01)
    assert strategy.accountant.get_privacy_spent().epsilon > 0
