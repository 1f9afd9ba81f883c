"""End to end: ``task=segmentation strategy=svt`` in a real Flower simulation with a real MLflow store."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from common.privacy.svt_ledger import SVT_LEDGER_FILE, SvtLedger
from server.simulate import simulate

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_svt_segmentation_logs_dice_eps_svt_and_bytes(tiny_config, tmp_path):
    cfg = tiny_config(
        "task=segmentation", "strategy=svt", "federation.num_rounds=2", "task.image_size=32",
        "~federation.sites.hospital_c", "strategy.svt.epsilon=1e6", "strategy.svt.max_epsilon=1e7",
        *[f"federation.sites.hospital_{s}.data.{k}={v}" for s in "ab" for k, v in (("num_train", 32), ("num_test", 8))],
    )
    report = simulate(cfg)
    client = MlflowClient(report.tracking_uri)

    def history(key):
        return sorted((m.step, m.value) for m in client.get_metric_history(report.run_id, key))

    assert report.stop_reason is None
    assert [s for s, _ in history("dice")] == [1, 2] and all(0 <= v <= 1 for _, v in history("dice"))
    # Basic composition: one release of ε = 1e6 per round and site.
    assert history("eps_svt") == [(1, 1e6), (2, 2e6)]
    for site in ("hospital_a", "hospital_b"):
        assert history(f"site.{site}.eps_svt") == [(1, 1e6), (2, 2e6)]
        assert SvtLedger.from_json((tmp_path / "state" / site / SVT_LEDGER_FILE).read_text()).epsilon == 2e6
    # UNet: d = 585 787 float32 coordinates (2.34 MB dense); at most 10 % travel, with a d/8-byte mask.
    dense = 4 * 585_787
    for _, sent in history("bytes_per_site"):
        assert 0.03 * dense < sent <= (0.1 + 1 / 32) * dense + 1_000
    assert history("eps_sample_max")[-1][1] > 0  # DP-SGD still accounted underneath
