"""``privmed-audit`` end to end on tiny configs: it runs, prints its table and logs the contract metrics.

The console script runs in a subprocess (Hydra app, real Flower simulation for membership),
logging to a sqlite MLflow store named by ``MLFLOW_TRACKING_URI`` only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

TINY = [
    "model=small_cnn",
    "federation.num_rounds=1",
    "training.batch_size=16",
    "training.max_physical_batch_size=16",
    "simulation.show_progress=false",
    "device=cpu",
    *[f"federation.sites.hospital_{s}.data.{k}={v}" for s in "bc" for k, v in (("num_train", 40), ("num_test", 20))],
    "federation.sites.hospital_a.data.num_train=110",
    "federation.sites.hospital_a.data.num_test=20",
]


def _audit(tmp_path: Path, *overrides: str) -> tuple[str, dict[str, float], list[str]]:
    uri = f"sqlite:///{tmp_path / 'audit.db'}"
    cmd = [str(Path(sys.executable).parent / "privmed-audit"), *TINY, *overrides, f"hydra.run.dir={tmp_path / 'out'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("privmed-audit")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`privmed.audit` != ''")
    assert len(runs) == 1
    run = runs[0]
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "audit")]
    assert run.data.params["model._target_"].endswith("build_small_cnn")  # the audited config as params
    return proc.stdout, run.data.metrics, artifacts


@pytest.mark.slow
def test_inversion_cli_logs_the_contract_metrics(tmp_path):
    stdout, metrics, artifacts = _audit(
        tmp_path, "audit=inversion", "audit.iterations=2", "audit.targets=2", "audit.pool=100",
        "audit.cases=[{trainable:all,batch:1},{trainable:all,batch:2}]",
    )
    for key in ("inversion.none.reid", "inversion.dp.reid", "inversion.chance", "inversion.none.psnr",
                "inversion.dp.psnr", "inversion.prior.psnr", "inversion.all_b2.dp.reid"):
        assert key in metrics, key
    assert metrics["inversion.chance"] == pytest.approx(0.01)
    assert "audit/inversion_grid_classification.png" in artifacts
    assert "re-id" in stdout and "chance 0.0100" in stdout


@pytest.mark.slow
def test_membership_cli_logs_the_contract_metrics(tmp_path):
    stdout, metrics, _ = _audit(tmp_path, "audit=membership", "audit.canaries=20")
    for key in ("membership.none.eps_lower", "membership.dp.eps_lower", "membership.dp.eps_claimed",
                "membership.none.auc", "membership.dp.auc", "membership.none.auc_rounds"):
        assert key in metrics, key
    assert 0 < metrics["membership.dp.eps_claimed"] <= 8.0
    assert "ε lower" in stdout and "per-round score on the site update" in stdout
