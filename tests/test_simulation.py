"""End to end: real Flower simulations (Ray), real MLflow sqlite store, real accounting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from independent_accounting import gaussian_epsilon, sample_level_epsilon
from mlflow.tracking import MlflowClient

from common.models import build_model
from common.models.logged import load_trained_model
from common.privacy.site_accountant import LEDGER_FILE
from server.simulate import simulate

pytestmark = pytest.mark.slow
SITES = ["hospital_a", "hospital_b", "hospital_c"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """MLflow puts sqlite-backed artifacts under ./mlruns: keep them in the test's directory."""
    monkeypatch.chdir(tmp_path)


def _run(report):
    client = MlflowClient(report.tracking_uri)
    return client, client.get_run(report.run_id)


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _artifacts(client, run_id, path=""):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def test_classification_federation_logs_metrics_epsilon_and_model(tiny_config, tmp_path):
    cfg = tiny_config()
    report = simulate(cfg)
    client, run = _run(report)
    assert run.info.status == "FINISHED"
    assert run.data.tags["privmed.privacy"] == "dp"
    auc = _history(client, run.info.run_id, "auc")
    assert [s for s, _ in auc] == [1, 2] and all(0.0 <= v <= 1.0 for _, v in auc)
    params = run.data.params
    assert params["privacy.delta"] == "1e-05"
    for site in SITES:
        steps = _history(client, run.info.run_id, f"site.{site}.steps")
        assert steps == [(1, 4.0), (2, 8.0)]
        sigma, q = float(params[f"site.{site}.noise_multiplier"]), float(params[f"site.{site}.sample_rate"])
        eps = _history(client, run.info.run_id, f"site.{site}.eps_sample")
        # The reported ε after each round is the independent accountant's for all steps so far.
        for (step, value), total in zip(eps, (4, 8)):
            assert value == pytest.approx(sample_level_epsilon([(sigma, q, total)], 1e-5), rel=0.03)
        assert eps[-1][1] <= cfg.privacy.target_epsilon
        ledger = json.loads((tmp_path / "state" / site / LEDGER_FILE).read_text())
        assert sum(h[2] for h in ledger["history"]) == 8
    eps_max = _history(client, run.info.run_id, "eps_sample_max")
    assert eps_max[-1][1] == pytest.approx(max(_history(client, run.info.run_id, f"site.{s}.eps_sample")[-1][1] for s in SITES))
    assert "eps_client" not in run.data.metrics
    artifacts = _artifacts(client, run.info.run_id)
    assert {"config/resolved_config.yaml", "report/progress.png", "report/summary.txt"} <= set(artifacts)
    # The logged MLflow Model is complete (frozen + trained weights) and loads into a plain model.
    trained = load_trained_model(f"runs:/{run.info.run_id}/model", tracking_uri=report.tracking_uri)
    build_model(cfg.model).load_state_dict(trained.module.state_dict(), strict=True)


@pytest.mark.parametrize("task,metric", [("classification", "auc"), ("segmentation", "dice")])
def test_non_private_reference_logs_its_metric_and_no_epsilon(tiny_config, task, metric):
    report = simulate(tiny_config("privacy=none", f"task={task}", "federation.num_rounds=1"))
    client, run = _run(report)
    assert run.info.status == "FINISHED" and run.data.tags["privmed.privacy"] == "none"
    assert [s for s, _ in _history(client, run.info.run_id, metric)] == [1]
    assert not [k for k in run.data.metrics if k.startswith("eps") or ".eps" in k]
    assert not [k for k in run.data.params if k.endswith("noise_multiplier") or k.endswith("sample_rate")]
    assert run.data.metrics["sites_trained"] == 3


def test_segmentation_federation_logs_dice(tiny_config):
    report = simulate(tiny_config("task=segmentation"))
    client, run = _run(report)
    dice = _history(client, run.info.run_id, "dice")
    assert [s for s, _ in dice] == [1, 2] and all(0.0 <= v <= 1.0 for _, v in dice)
    assert "dice.liver" in run.data.metrics and "dice.lesion" in run.data.metrics
    assert run.data.metrics["eps_sample_max"] > 0


@pytest.mark.parametrize("strategy", ["dp_fedavg", "dp_fedavg_adaptive"])
def test_client_level_epsilon_matches_independent_accountant(tiny_config, strategy):
    extra = ["strategy.client_dp.clipped_count_stddev=10"] if strategy.endswith("adaptive") else []
    cfg = tiny_config(
        f"strategy={strategy}", "strategy.client_dp.noise_multiplier=3.0", "strategy.client_dp.delta=1e-2", *extra
    )
    report = simulate(cfg)
    client, run = _run(report)
    eps = _history(client, run.info.run_id, "eps_client")
    assert [s for s, _ in eps] == [1, 2]
    for step, value in eps:
        assert value == pytest.approx(gaussian_epsilon(3.0, step, 1e-2), rel=0.03)
    assert report.stop_reason is None


def test_client_budget_stops_the_run_cleanly(tiny_config):
    # σ=3, δ=1e-2: ε≈0.67 after one release, ≈1.05 after two; a budget of 0.9 allows one round.
    cfg = tiny_config(
        "strategy=dp_fedavg", "strategy.client_dp.noise_multiplier=3.0", "strategy.client_dp.delta=1e-2",
        "strategy.client_dp.max_epsilon=0.9", "federation.num_rounds=3",
    )
    report = simulate(cfg)
    client, run = _run(report)
    assert "exceed" in report.stop_reason
    assert [s for s, _ in _history(client, run.info.run_id, "eps_client")] == [1]
    assert run.data.tags["privmed.stop_reason"] == report.stop_reason
    assert [m.model_id for m in run.outputs.model_outputs]  # the final model was logged


def test_sites_refusing_beyond_their_budget_end_the_run(tiny_config):
    # Fixed σ=1.5 at q=1/4: ε≈2.5 after round 1, 3.2 after round 2 > budget 3.
    cfg = tiny_config("privacy.noise_multiplier=1.5", "privacy.target_epsilon=3.0", "federation.num_rounds=4")
    report = simulate(cfg)
    client, run = _run(report)
    assert "no site trained in round 2" in report.stop_reason
    assert _history(client, run.info.run_id, "sites_trained") == [(1, 3.0), (2, 0.0)]
    assert run.data.metrics["eps_sample_max"] <= 3.0


def test_multirun_sweep_makes_child_runs_under_one_parent(tmp_path):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'sweep.db'}")
    cmd = [
        sys.executable, "-m", "server.simulate", "-m", "privacy.noise_multiplier=1.5,2.0",
        "federation.num_rounds=1", "training.batch_size=16", "simulation.show_progress=false", "aggregation=plain",
        *[f"federation.sites.hospital_{s}.data.num_train=64" for s in "abc"],
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("privmed")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("privmed.role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert sorted(c.data.params["privacy.noise_multiplier"] for c in children) == ["1.5", "2.0"]


def test_invalid_config_fails_before_anything_starts(tmp_path):
    cmd = [sys.executable, "-m", "server.simulate", "federation.num_rounds=0", f"hydra.run.dir={tmp_path}"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "invalid configuration: federation.num_rounds must be >= 1, got 0" in result.stderr
