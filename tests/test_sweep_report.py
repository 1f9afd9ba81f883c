"""Sweep report: real MLflow sqlite store, child runs made with MlflowClient, the real CLI and Hydra."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf, open_dict
from PIL import Image

from common.run_config import CONF_DIR
from server.report_cli import main as report_main
from server.sweep_callback import TuningOnRealData, _check_tuning_data
from server.sweep_plot import points, setting_keys
from server.sweep_report import ReportError, build_report, log_report

SWEEP = "/data/multirun/2026-12-03/10-00-00"
FINISHED = RunStatus.to_string(RunStatus.FINISHED)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A real sqlite MLflow store with the experiment's artifacts in the test's directory."""
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("privmed", artifact_location=(tmp_path / "artifacts").as_uri())
    return client, experiment


def _run(client, experiment, *, parent=None, eps=None, seed=42, aucs=(0.6, 0.7), privacy="dp", eps_client=None, job=0,
         stop_reason=None):
    """A finished privmed-like run: the params its resolved config logs, one metric point per round."""
    tags = {"privmed.privacy": privacy, **({"privmed.stop_reason": stop_reason} if stop_reason else {})}
    if parent:
        tags.update({"mlflow.parentRunId": parent, "privmed.sweep": SWEEP})
    run_id = client.create_run(experiment, tags=tags).info.run_id
    params = {
        "seed": seed, "task.metric": "auc", "privacy.delta": 1e-5, "federation.num_rounds": len(aucs),
        "privacy.enabled": privacy == "dp", "privacy.target_epsilon": eps if eps is not None else 8.0,
        # Values that differ between jobs without being swept: the job's own dirs, calibrated σ.
        "state_root": f"{SWEEP}/{job}/state", "site.hospital_a.noise_multiplier": 10.0 / (eps or 1.0),
    }
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    for step, auc in enumerate(aucs, start=1):
        metrics = {"auc": auc, "loss": 0.5}
        if privacy == "dp":
            metrics["eps_sample_max"] = eps * step / len(aucs)
        if eps_client is not None:
            metrics["eps_client"] = eps_client * step / len(aucs)
        client.log_batch(run_id, metrics=[Metric(k, v, 1_000 * step, step) for k, v in metrics.items()])
    client.set_terminated(run_id, FINISHED)
    return run_id


def _parent(client, experiment):
    run_id = client.create_run(experiment, tags={"privmed.sweep": SWEEP, "privmed.role": "parent"}).info.run_id
    client.set_terminated(run_id, FINISHED)
    return run_id


def _seed_sweep(client, experiment):
    """ε ∈ {2, 8} × seed ∈ {1, 2} plus one non-private child: 5 children."""
    parent = _parent(client, experiment)
    job = 0
    for eps, base in ((2.0, 0.62), (8.0, 0.80)):
        for seed, delta in ((1, -0.02), (2, 0.02)):
            _run(client, experiment, parent=parent, eps=eps, seed=seed, aucs=(0.55, base + delta), job=job)
            job += 1
    _run(client, experiment, parent=parent, seed=1, aucs=(0.7, 0.9), privacy="none", job=job)
    return parent


def test_report_has_one_row_per_child_with_swept_overrides_final_metric_and_epsilon(store, tmp_path):
    client, experiment = store
    parent = _seed_sweep(client, experiment)
    report = build_report(client, parent, out_dir=tmp_path / "out")

    assert report.metric == "auc"
    # Swept: privacy.enabled/target_epsilon (the non-private child differs) and seed; not the
    # job dirs nor the calibrated per-site σ.
    assert report.swept == ["privacy.enabled", "privacy.target_epsilon", "seed"]
    with open(tmp_path / "out" / "privacy_utility.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5
    assert {"run_id", "status", "stop_reason", "privacy.target_epsilon", "seed", "auc", "eps_sample_max", "rounds", "wall_time_s"} <= set(rows[0])
    by_setting = {(r["privacy.target_epsilon"], r["seed"], r["privacy"]): r for r in rows}
    assert float(by_setting[("2.0", "1", "dp")]["auc"]) == pytest.approx(0.60)  # last value, not the first
    assert float(by_setting[("8.0", "2", "dp")]["eps_sample_max"]) == pytest.approx(8.0)
    assert by_setting[("8.0", "1", "none")]["eps_sample_max"] == ""
    assert {r["rounds"] for r in rows} == {"2"}
    assert all(float(r["wall_time_s"]) >= 0 for r in rows)

    html = (tmp_path / "out" / "privacy_utility.html").read_text()
    assert all(r["run_id"] in html for r in rows) and "privacy_utility.png" in html
    with Image.open(tmp_path / "out" / "privacy_utility.png") as image:
        assert image.format == "PNG" and image.width >= 600


def test_seeds_are_averaged_into_one_point_per_setting(store, tmp_path):
    client, experiment = store
    report = build_report(client, _seed_sweep(client, experiment), out_dir=tmp_path)
    keys = setting_keys(report.rows, report.swept)
    assert keys == ["privacy.target_epsilon"]  # privacy.enabled only tells the reference apart
    pts = points(report.rows, "eps_sample_max", metric="auc", keys=keys)
    assert list(pts["eps"]) == pytest.approx([2.0, 8.0])
    assert list(pts["mean"]) == pytest.approx([0.62, 0.80])
    assert list(pts["std"]) == pytest.approx([0.04 / 2**0.5] * 2)
    assert list(pts["n"]) == [2, 2]


def test_client_level_epsilon_gets_its_own_panel(store, tmp_path):
    client, experiment = store
    parent = _parent(client, experiment)
    for job, eps in enumerate((2.0, 8.0)):
        _run(client, experiment, parent=parent, eps=eps, eps_client=3 * eps, job=job)
    report = build_report(client, parent, out_dir=tmp_path)
    assert list(report.rows["eps_client"]) == pytest.approx([6.0, 24.0])
    with Image.open(tmp_path / "privacy_utility.png") as image:
        two_panels = image.width
    sample_only = _parent(client, experiment)
    for job, eps in enumerate((2.0, 8.0)):
        _run(client, experiment, parent=sample_only, eps=eps, job=job)
    build_report(client, sample_only, out_dir=tmp_path / "one")
    with Image.open(tmp_path / "one" / "privacy_utility.png") as image:
        assert two_panels > 1.8 * image.width


def test_cli_logs_the_report_to_the_parent_with_a_reference_run(store, capsys):
    client, experiment = store
    parent = _parent(client, experiment)
    _run(client, experiment, parent=parent, eps=1.0, job=0)
    _run(client, experiment, parent=parent, eps=4.0, aucs=(0.6,), job=1, stop_reason="round 2: no site trained")
    reference = _run(client, experiment, aucs=(0.8, 0.93), privacy="none")

    assert report_main([parent, "--reference", reference, "--tracking-uri", client.tracking_uri]) == 0
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert logged == {f"report/privacy_utility.{ext}" for ext in ("png", "csv", "html")}
    csv_text = client.download_artifacts(parent, "report/privacy_utility.csv")
    with open(csv_text) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2  # one row per child
    stopped = next(r for r in rows if r["stop_reason"])
    assert stopped["stop_reason"] == "round 2: no site trained" and stopped["rounds"] == "1"
    html = open(client.download_artifacts(parent, "report/privacy_utility.html")).read()
    assert reference in html  # the reference's table
    assert "privacy.target_epsilon" in capsys.readouterr().out


def test_unknown_run_no_children_and_private_reference_are_clear_errors(store, tmp_path, capsys):
    client, experiment = store
    with pytest.raises(ReportError, match="no parent run 'deadbeef' in the MLflow store"):
        log_report(client, "deadbeef")
    single = _run(client, experiment, eps=8.0)
    with pytest.raises(ReportError, match=f"run {single} .* has no child runs"):
        build_report(client, single, out_dir=tmp_path)
    parent = _parent(client, experiment)
    _run(client, experiment, parent=parent, eps=8.0)
    with pytest.raises(ReportError, match=f"reference run {single} is tagged privmed.privacy=dp, not none"):
        build_report(client, parent, out_dir=tmp_path, references=[single])
    assert report_main(["deadbeef", "--tracking-uri", client.tracking_uri]) == 2
    assert "privmed-report: error: no parent run 'deadbeef'" in capsys.readouterr().err


def test_optuna_overlay_composes_to_a_valid_search_space():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hparams_search=dp_optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert cfg.privacy.target_epsilon == 8.0 and cfg.privacy.noise_multiplier is None  # fixed ε, σ calibrated
    parser = OverridesParser.create()
    tuned = set()
    for key, value in sweeper.params.items():
        assert OmegaConf.select(cfg, key) is not None, f"{key} is not a config key"
        create_optuna_distribution_from_override(parser.parse_override(f"{key}={value}"))
        tuned.add(key)
    assert tuned == {"training.optimizer.lr", "privacy.max_grad_norm", "training.batch_size"}


def test_tuning_refuses_sites_that_read_real_files():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hparams_search=dp_optuna"])
    _check_tuning_data(cfg)  # synthetic sites: fine
    with open_dict(cfg):
        cfg.federation.sites.hospital_b.data.synthesize = False
    with pytest.raises(TuningOnRealData, match="sites hospital_b read real patient files"):
        _check_tuning_data(cfg)
    with open_dict(cfg):
        cfg.tuning.allow_real_data = True
    _check_tuning_data(cfg)


@pytest.mark.slow
def test_multirun_logs_the_report_to_its_parent(tmp_path):
    """The issue's contract: ``-m privacy.target_epsilon=2,8`` leaves the report on the parent.

    Jobs run one after another: two jobs starting Ray at once on a loaded 2-core machine can miss
    Ray's fixed 30 s raylet start-up wait (README "Parallel sweeps" has the by-hand joblib check).
    """
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'sweep.db'}")
    cmd = [
        sys.executable, "-m", "server.simulate", "-m", "privacy.target_epsilon=2,8", "federation.num_rounds=1",
        "model=small_cnn", "training.batch_size=16", "simulation.show_progress=false", "device=cpu",
        # The report does not depend on how updates are summed; plain rounds are the lighter path.
        "aggregation=plain",
        *[f"federation.sites.hospital_{s}.data.{k}={n}" for s in "abc" for k, n in (("num_train", 48), ("num_test", 32))],
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("privmed").experiment_id])
    parents = [r.info.run_id for r in runs if r.data.tags.get("privmed.role") == "parent"]
    children = [r.info.run_id for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    logged = {a.path for a in client.list_artifacts(parents[0], "report")}
    assert {"report/privacy_utility.png", "report/privacy_utility.csv", "report/privacy_utility.html"} <= logged
    with open(client.download_artifacts(parents[0], "report/privacy_utility.csv")) as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["run_id"] for r in rows) == sorted(children)
    assert sorted(float(r["privacy.target_epsilon"]) for r in rows) == [2.0, 8.0]
    assert [r["stop_reason"] for r in rows] == ["", ""], "a federation stopped early (see the sweep's log)"
    assert all(0 < float(r["eps_sample_max"]) <= float(r["privacy.target_epsilon"]) + 1e-6 for r in rows)
