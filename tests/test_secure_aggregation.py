"""SecAgg+ end to end: real Flower simulations running Flower's SecAgg+ protocol between the sites."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.compat.common import recorddict_compat as compat
from independent_accounting import gaussian_epsilon
from mlflow.tracking import MlflowClient

from client.secure_messages import is_secure_fit
from common.models import exchanged_state, initial_model
from common.models.logged import load_trained_model
from server.simulate import simulate

pytestmark = pytest.mark.slow
DROPPED_PARTITION = 1  # hospital_b


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _history(report, key):
    client = MlflowClient(report.tracking_uri)
    return [m.value for m in sorted(client.get_metric_history(report.run_id, key), key=lambda m: m.step)]


def _final_exchanged(report, cfg, tmp_path, name):
    full = load_trained_model(f"runs:/{report.run_id}/model", tracking_uri=report.tracking_uri).module.state_dict()
    return {k: full[k] for k in exchanged_state(initial_model(cfg.model, cfg.seed))}


def test_secure_aggregate_equals_fedavg_of_the_same_clipped_updates(tiny_config, tmp_path):
    """(a) Noise (practically) off: SecAgg+ with site-side clipping = plain DP-FedAvg's server-side clipping."""
    clip = ["strategy=dp_fedavg", "strategy.client_dp.noise_multiplier=1e-6", "strategy.client_dp.clipping_norm=0.05",
            "strategy.client_dp.max_epsilon=1e15", "federation.num_rounds=1"]
    plain_cfg = tiny_config(*clip)
    secure_cfg = tiny_config(*clip, "aggregation=secaggplus", f"state_root={tmp_path / 'state_secure'}")
    plain, secure = simulate(plain_cfg), simulate(secure_cfg)
    start = exchanged_state(initial_model(plain_cfg.model, plain_cfg.seed))
    a = _final_exchanged(plain, plain_cfg, tmp_path, "plain")
    b = _final_exchanged(secure, secure_cfg, tmp_path, "secure")
    moved = torch.sqrt(sum(((a[k] - start[k]).double() ** 2).sum() for k in a))
    # The clipping was binding (3 clipped updates of norm 0.05 averaged) and both paths moved alike.
    assert 0.02 < float(moved) <= 0.05 + 1e-4
    resolution = 2 * 0.05 / secure_cfg.aggregation.quantization_range
    for key in a:
        assert torch.allclose(a[key], b[key], atol=3 * resolution + 1e-5), key
    assert _history(secure, "sites_aggregated") == [3.0]
    assert _history(secure, "auc") == pytest.approx(_history(plain, "auc"), abs=2e-3)


def drop_hospital_b_in_round_1(msg: Message, ctxt: Context, call_next) -> Message:
    """hospital_b crashes after sharing its SecAgg+ keys, while it should send its masked update."""
    if (
        msg.metadata.message_type == MessageType.TRAIN
        and is_secure_fit(msg.content)
        and int(ctxt.node_config["partition-id"]) == DROPPED_PARTITION
        and int(compat.recorddict_to_fitins(msg.content, keep_input=True).config["server-round"]) == 1
    ):
        raise RuntimeError("hospital_b lost power")
    return call_next(msg, ctxt)


def test_round_completes_when_a_site_drops_after_sharing_keys(tiny_config):
    """(b) Its masks are reconstructed from the others' shares; it rejoins the next round."""
    report = simulate(tiny_config("aggregation=secaggplus"), client_mods=[drop_hospital_b_in_round_1])
    assert report.stop_reason is None
    assert _history(report, "sites_aggregated") == [2.0, 3.0]
    assert len(_history(report, "auc")) == 2
    # hospital_b crashed before training in round 1: its ε is reported from round 2 only.
    assert len(_history(report, "site.hospital_b.eps_sample")) == 1


def test_client_epsilon_with_secure_aggregation_matches_independent_accountant(tiny_config):
    """(d) Client-level ε under SecAgg+ (segmentation: both tasks run) and the budget stop."""
    z, delta = 2.0, 1e-3
    cap = (gaussian_epsilon(z, 2, delta) + gaussian_epsilon(z, 3, delta)) / 2  # room for two releases only
    report = simulate(
        tiny_config(
            "task=segmentation",
            "aggregation=secaggplus",
            "strategy=dp_fedavg",
            f"strategy.client_dp.noise_multiplier={z}",
            f"strategy.client_dp.max_epsilon={cap}",
            "federation.num_rounds=3",
        )
    )
    eps = _history(report, "eps_client")
    assert eps == pytest.approx([gaussian_epsilon(z, r, delta) for r in (1, 2)], rel=0.03)
    assert "max_epsilon" in report.stop_reason
    assert len(_history(report, "dice")) == 2
