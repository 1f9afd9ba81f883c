"""A site with a truncated JPEG: the run completes with the other site, and the summary says which site failed and why."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from common.data.synthesize import ensure_synthetic
from common.federation_config import site_view
from server.simulate import exit_status, simulate

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's sqlite-backed artifacts go to ./mlruns


def test_truncated_jpeg_is_named_in_one_line_and_the_run_completes(tiny_config):
    cfg = tiny_config(
        "model=small_cnn", "~federation.sites.hospital_c", "task.image_size=16", "federation.num_rounds=1",
        "aggregation=plain",  # SecAgg+ needs 3 sites
        small_sites=True,
    )
    # hospital_b's files as a hospital would have them, then one JPEG cut short.
    view = site_view(cfg, "hospital_b")
    root = Path(view.data.root)
    ensure_synthetic(root, task=cfg.task, data=view.data)
    jpeg = sorted((root / "train").rglob("*.jpeg"))[0]
    jpeg.write_bytes(jpeg.read_bytes()[:200])

    report = simulate(cfg)
    assert report.failures == ["hospital_b (round 1): site hospital_b: DataError"]
    assert exit_status(report) == 0  # the planned round completed with hospital_a
    run = MlflowClient(report.tracking_uri).get_run(report.run_id)
    assert run.data.metrics["sites_trained"] == 1
    summary = Path(MlflowClient(report.tracking_uri).download_artifacts(report.run_id, "report/summary.txt", ".")).read_text()
    assert "Sites that failed or refused:\n  hospital_b (round 1): site hospital_b: DataError" in summary
    assert str(jpeg) not in summary  # the path stays at the site
