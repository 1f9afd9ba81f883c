"""Partial sharing and SVT without Flower's round loop: selection, encoding, averaging, bytes, config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from client.sparse_sharing import SparseSharing
from common.federation_config import ConfigError, site_view, validate_config
from common.models import exchanged_state, initial_model
from common.privacy import PrivacyBudgetExceeded
from common.sparse_update import (
    INDICES,
    MASK,
    VALUES,
    MalformedUpdate,
    apply_flat,
    average_sparse,
    decode,
    encode,
    flat_delta,
    top_fraction,
)
from server.round_tracker import RoundTracker


class ListSink:
    def __init__(self):
        self.rounds, self.params = [], {}

    def log_site_params(self, params):
        self.params.update(params)

    def log_round(self, server_round, metrics):
        self.rounds.append((server_round, metrics))


def test_top_fraction_selects_largest_magnitudes():
    delta = np.array([0.1, -5.0, 0.3, 2.0, -0.2, 0.0, 4.0, -0.05, 1.0, 0.01])
    assert top_fraction(delta, 0.3).tolist() == [1, 3, 6]  # |−5|, |2|, |4|
    assert top_fraction(delta, 0.01).tolist() == [1]  # at least one coordinate
    assert top_fraction(delta, 1.0).tolist() == list(range(10))


@pytest.mark.parametrize("fraction,key", [(0.5, MASK), (0.01, INDICES)])
def test_encoding_round_trips_and_is_the_smaller_one(fraction, key):
    rng = np.random.default_rng(0)
    size = 10_000
    delta = rng.normal(size=size)
    idx = top_fraction(delta, fraction)
    arrays = encode(idx, delta[idx], size=size, fraction=fraction)
    assert set(arrays) == {key, VALUES}
    dense = decode(arrays, size=size, limit=idx.size)
    expected = np.zeros(size)
    expected[idx] = delta[idx].astype(np.float32)
    assert np.array_equal(dense, expected)


def test_decode_refuses_malformed_messages():
    good = {INDICES: np.array([1, 5], dtype=np.uint32), VALUES: np.array([1.0, 2.0], dtype=np.float32)}
    with pytest.raises(ValueError, match="outside"):
        decode({**good, INDICES: np.array([1, 50], dtype=np.uint32)}, size=10, limit=5)
    with pytest.raises(ValueError, match="repeated"):
        decode({**good, INDICES: np.array([1, 1], dtype=np.uint32)}, size=10, limit=5)
    with pytest.raises(ValueError, match="more than the allowed 1"):
        decode(good, size=10, limit=1)
    with pytest.raises(ValueError, match="non-finite"):
        decode({**good, VALUES: np.array([1.0, np.nan], dtype=np.float32)}, size=10, limit=5)
    with pytest.raises(ValueError, match="expected arrays"):
        decode({"weights": np.zeros(10)}, size=10, limit=5)


def test_unshared_coordinates_count_as_zero_update():
    start = {"b": np.zeros(2, dtype=np.float32), "a": np.ones((2, 2), dtype=np.float32)}  # layout: a (4), then b (2)
    site1 = {INDICES: np.array([0, 4], dtype=np.uint32), VALUES: np.array([3.0, 6.0], dtype=np.float32)}
    site2 = {INDICES: np.array([4], dtype=np.uint32), VALUES: np.array([3.0], dtype=np.float32)}
    merged = average_sparse(start, [(site1, 1.0), (site2, 2.0)], fraction=1.0)
    # a[0,0]: only site 1 shared it: 1 + (1·3 + 2·0)/3 = 2; b[0]: (1·6 + 2·3)/3 = 4.
    assert merged["a"].tolist() == [[2.0, 1.0], [1.0, 1.0]] and merged["b"].tolist() == [4.0, 0.0]
    assert merged["a"].dtype == np.float32 and list(merged) == ["b", "a"]
    with pytest.raises(MalformedUpdate) as err:
        average_sparse(start, [(site1, 1.0), ({VALUES: np.ones(1)}, 1.0)], fraction=1.0)
    assert err.value.position == 1


def test_flat_delta_and_apply_flat_invert():
    old = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(2, dtype=np.float32)}
    new = {"w": old["w"] + 1, "b": old["b"] - 2}
    delta = flat_delta(new, old)
    assert delta.tolist() == [-2, -2, 1, 1, 1, 1, 1, 1]  # sorted keys: b, then w
    back = apply_flat(old, delta)
    assert all(np.array_equal(back[k], new[k]) for k in new)


def _reply(arrays: dict[str, np.ndarray], index: int) -> RecordDict:
    metrics = {"site-index": float(index), "uniform-weight": 1.0, "steps": 4.0}
    return RecordDict({"arrays": ArrayRecord(array_dict={k: Array(v) for k, v in arrays.items()}),
                       "metrics": MetricRecord(metrics)})


def test_bytes_per_site_partial_sharing_is_about_a_tenth_of_fedavg(tiny_config):
    cfg = tiny_config("task=segmentation", "strategy=partial_sharing", "strategy.fraction=0.1")
    received = exchanged_state(initial_model(cfg.model, cfg.seed))
    trained = {k: v + torch.randn_like(v) for k, v in received.items()}
    view = site_view(cfg, "hospital_a")
    release = SparseSharing.for_site(cfg.strategy, view, seed=cfg.seed).release(
        trained, received, server_round=1, ledger=None
    )
    size = sum(v.numel() for v in received.values())
    assert release.metrics["shared-coordinates"] == np.ceil(0.1 * size)
    bytes_per_site = {}
    for name, arrays in [("fedavg", {k: v.numpy() for k, v in trained.items()}), ("partial", release.arrays)]:
        tracker = RoundTracker(sites=["hospital_a", "hospital_b"], metric="dice", sink=ListSink())
        tracker.aggregate_train_metrics([_reply(arrays, 0), _reply(arrays, 1)], "uniform-weight")
        tracker.end_round(1, ArrayRecord())
        bytes_per_site[name] = tracker.rows[-1]["bytes_per_site"]
    ratio = bytes_per_site["partial"] / bytes_per_site["fedavg"]
    # A tenth of the values plus the position mask (d/8 bytes = 1/32 of the dense float32 update).
    assert ratio == pytest.approx(0.1 + 1 / 32, abs=0.01)


def test_svt_site_accounts_and_refuses_over_budget(tiny_config):
    cfg = tiny_config("model=small_cnn", "strategy=svt", "strategy.svt.epsilon=100", "strategy.svt.max_epsilon=250")
    received = exchanged_state(initial_model(cfg.model, cfg.seed))
    trained = {k: v + 0.3 * torch.randn_like(v) for k, v in received.items()}
    sharing = SparseSharing.for_site(cfg.strategy, site_view(cfg, "hospital_a"), seed=cfg.seed)
    cached = None
    for server_round in (1, 2):
        ledger = sharing.check_budget(received, cached, server_round=server_round)
        release = sharing.release(trained, received, server_round=server_round, ledger=ledger)
        cached = release.ledger_json
        assert release.metrics["eps-svt"] == pytest.approx(100.0 * server_round)
        # Asked again for the same round on the same global model: the same release, no new ε.
        again = sharing.release(
            trained, received, server_round=server_round,
            ledger=sharing.check_budget(received, cached, server_round=server_round),
        )
        assert again.metrics == release.metrics
        assert all(np.array_equal(again.arrays[k], release.arrays[k]) for k in release.arrays)
        values = release.arrays[VALUES]
        assert 0 < values.size <= np.ceil(0.1 * sum(v.numel() for v in received.values()))
        assert np.all(np.abs(values) <= cfg.strategy.svt.gamma)
    with pytest.raises(PrivacyBudgetExceeded, match="over its budget 250"):
        sharing.check_budget(received, cached, server_round=3)
    # A site's own privacy.svt_max_epsilon wins over the coordinator's strategy.svt.max_epsilon.
    own = tiny_config("model=small_cnn", "strategy=svt", "+federation.sites.hospital_a.privacy.svt_max_epsilon=5")
    assert SparseSharing.for_site(own.strategy, site_view(own, "hospital_a"), seed=own.seed).budget == 5.0
    assert SparseSharing.for_site(tiny_config().strategy, site_view(cfg, "hospital_a"), seed=1) is None


@pytest.mark.parametrize("strategy", ["partial_sharing", "svt"])
def test_sparse_strategies_pick_plain_aggregation(strategy):
    # SecAgg+ is the default aggregation; the command must run as given.
    from common.run_config import compose_config

    cfg = compose_config(["task=segmentation", f"strategy={strategy}", "federation.num_rounds=2"])
    assert cfg.aggregation.name == "plain" and cfg.strategy.name == strategy
    validate_config(cfg)
    assert compose_config(["strategy=fedavg"]).aggregation.name == "secaggplus"


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["strategy=svt", "aggregation=secaggplus"], "reveals which coordinates"),
        (["strategy=partial_sharing", "aggregation=secaggplus"], "reveals which coordinates"),
        (["strategy=partial_sharing", "strategy.fraction=0"], "strategy.fraction must be in"),
        (["strategy=svt", "strategy.svt.tau=2"], "strategy.svt.tau"),
        (["strategy=svt", "strategy.svt.epsilon=0"], "strategy.svt.epsilon must be > 0"),
    ],
)
def test_config_refused_with_a_clear_error(tiny_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(tiny_config(*overrides))
