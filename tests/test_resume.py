"""Resume a federation: a `privmed-simulate` SIGKILLed after round 2 continues to round 4 in its run.

Real processes (the command's whole process group is killed), a real MLflow sqlite store and
the sites' real ledgers: the resumed run must end where an uninterrupted run ends, without a
site paying twice for a round it trained before the kill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from common.federation_config import ConfigError
from common.privacy import SiteAccountant, calibrate_noise_multiplier
from common.privacy.site_accountant import LEDGER_FILE
from common.run_config import compose_config
from server.resume import config_differences, config_for_resume

pytestmark = pytest.mark.slow
SITES = ["hospital_a", "hospital_b"]
ROUNDS = 4
TINY = [
    "model=small_cnn", "~federation.sites.hospital_c", "task.image_size=16",
    "training.batch_size=16", "training.max_physical_batch_size=16", "simulation.show_progress=false",
    "device=cpu", "privacy.reproducible_noise=true", "aggregation=plain",  # SecAgg+ needs >= 3 sites
    *[f"federation.sites.{s}.data.{k}={v}" for s in SITES for k, v in (("num_train", 64), ("num_test", 32))],
]
# Bounded waits: a tiny round takes seconds on a quiet machine, minutes on a loaded one.
WAIT_S = 600


def _simulate(tmp_path: Path, name: str, *overrides: str) -> subprocess.Popen:
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    cmd = [sys.executable, "-m", "server.simulate", *overrides, f"hydra.run.dir={tmp_path / name}"]
    log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    # A session of its own: SIGKILL of its process group takes Ray's workers with it.
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _steps_at(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _ledger_steps(state: Path, site: str) -> int:
    path = state / site / LEDGER_FILE
    return sum(h[2] for h in json.loads(path.read_text())["history"]) if path.is_file() else 0


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the command's process group, then any process of its session that left the group."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    ps = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True, check=True).stdout
    for line in ps.splitlines():
        pid, sid = (int(x) for x in line.split())
        if sid == proc.pid:
            os.kill(pid, signal.SIGKILL)


def _wait_for(condition, proc: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"privmed-simulate exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            _kill_session(proc)
            pytest.fail(f"no {what} within {WAIT_S}s")
        time.sleep(0.1)


def test_killed_federation_resumes_in_its_run_with_the_same_epsilon(tmp_path, monkeypatch):
    first = _simulate(tmp_path, "first", f"federation.num_rounds={ROUNDS}", *TINY)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_ids: list[str] = []

    def round_logged(k: int):
        def seen() -> bool:
            if not run_ids:
                experiment = client.get_experiment_by_name("privmed") if (tmp_path / "mlflow.db").exists() else None
                runs = client.search_runs([experiment.experiment_id]) if experiment else []
                run_ids.extend(r.info.run_id for r in runs[:1])
            return bool(run_ids) and k in _steps_at(client, run_ids[0], "auc")
        return seen

    _wait_for(round_logged(2), first, tmp_path / "first.log", "round 2 in MLflow")
    run_id = run_ids[0]
    state = tmp_path / "first" / "state"
    after_two = {s: _ledger_steps(state, s) for s in SITES}
    # Best case for the test: kill while round 3 is trained but not yet aggregated (sites re-send).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(_ledger_steps(state, s) > after_two[s] for s in SITES):
        if round_logged(3)():
            break
        time.sleep(0.05)
    _kill_session(first)
    killed_mid_round = 3 not in _steps_at(client, run_id, "auc") and any(
        _ledger_steps(state, s) > after_two[s] for s in SITES
    )
    assert client.get_run(run_id).info.status == "RUNNING"  # a SIGKILL leaves no time to close the run

    second = _simulate(tmp_path, "second", f"resume={run_id}")
    try:
        second.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        _kill_session(second)
        pytest.fail(f"the resumed run did not end within {WAIT_S}s:\n{(tmp_path / 'second.log').read_text()[-3000:]}")
    assert second.returncode == 0, (tmp_path / "second.log").read_text()[-3000:]
    resumed_log = (tmp_path / "second.log").read_text()

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert sorted(_steps_at(client, run_id, "auc")) == [1, 2, 3, 4]
    per_round = after_two[SITES[0]] // 2
    q = float(run.data.params[f"site.{SITES[0]}.sample_rate"])
    # What an uninterrupted 4-round run reports: σ calibrated once for 4 rounds, 4 rounds of steps.
    sigma = calibrate_noise_multiplier(
        target_epsilon=8.0, delta=1e-5, sample_rate=q, steps=ROUNDS * per_round, mechanism="rdp"
    )
    fresh = SiteAccountant(site="x", mechanism="rdp", delta=1e-5)
    expected = fresh.epsilon_after(noise_multiplier=sigma, sample_rate=q, steps=ROUNDS * per_round)
    for site in SITES:
        assert _steps_at(client, run_id, f"site.{site}.eps_sample")[ROUNDS] == pytest.approx(expected, abs=1e-6)
        # No round was paid twice: the ledger (in the run's original state_root) holds 4 rounds.
        assert _ledger_steps(state, site) == ROUNDS * per_round
        assert _steps_at(client, run_id, f"site.{site}.steps")[ROUNDS] == ROUNDS * per_round
    if killed_mid_round:
        assert "re-sending the stored update" in resumed_log
    # The summary of the whole run, rounds before and after the kill.
    summary = Path(client.download_artifacts(run_id, "report/summary.txt", str(tmp_path))).read_text()
    assert all(f"│     {r} │" in summary for r in range(1, ROUNDS + 1))

    # A finished run and an unknown id are refused before anything starts.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="has finished"):
        config_for_resume(compose_config([*_tiny_uri(tmp_path), f"resume={run_id}"]), as_recorded=True)
    with pytest.raises(ConfigError, match="no such MLflow run"):
        config_for_resume(compose_config([*_tiny_uri(tmp_path), "resume=0123456789abcdef"]), as_recorded=True)


def _tiny_uri(tmp_path: Path) -> list[str]:
    return [f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]


def test_config_differences_ignore_resume_and_output_paths(tmp_path):
    recorded = compose_config([f"state_root={tmp_path / 'a' / 'state'}", "data_root=${state_root}/../data", *TINY])
    same = compose_config([f"state_root={tmp_path / 'b' / 'state'}", "data_root=${state_root}/../data", "resume=x", *TINY])
    assert config_differences(same, recorded) == []
    other = compose_config([f"state_root={tmp_path / 'b' / 'state'}", "federation.num_rounds=5", *TINY])
    assert config_differences(other, recorded) == ["federation.num_rounds"]
