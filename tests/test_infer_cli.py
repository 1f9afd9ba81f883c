"""The issue's observable contract: ``privmed-infer-server --model runs:/<id>/model`` serves (a real
process on a free port on 127.0.0.1) and ``privmed-infer <JPEG> --server URL --plaintext-model
runs:/<id>/model`` prints the probability and ends with ``abs_diff=`` <= 1e-3."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from omegaconf import OmegaConf

from client.infer import main as infer_main
from common.data.synthesize import ensure_synthetic
from common.federation_config import site_view
from common.models import build_model

pytestmark = pytest.mark.slow
SERVER = Path(sys.executable).parent / "privmed-infer-server"
STARTUP_TIMEOUT_S = 300


def _log_run(cfg, model, uri: str) -> str:
    """A finished run's final-model artifacts, as privmed-simulate logs them (model/ + config/)."""
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("privmed")).info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), Path(tmp) / "state_dict.pt")
        (Path(tmp) / "model_config.yaml").write_text(OmegaConf.to_yaml(cfg.model))
        client.log_artifacts(run, tmp, "model")
    client.log_text(run, OmegaConf.to_yaml(cfg), "config/resolved_config.yaml")
    return run


def _lines(proc: subprocess.Popen) -> tuple[queue.Queue, threading.Thread]:
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    return lines, reader


def _wait_for_url(proc: subprocess.Popen, lines: queue.Queue, seen: list[str]) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        match = re.search(r"serving .* at (http://127\.0\.0\.1:\d+)", line)
        if match:
            return match.group(1)
    raise AssertionError("privmed-infer-server did not start:\n" + "".join(seen))


def test_served_run_gives_the_plaintext_probability(tiny_config, tmp_path, monkeypatch, capsys):
    """The server is a real process reading the run from MLflow; the clinic's CLI runs in-process."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with _use_tracking_uri(uri):  # in-process CLI: MLflow's process-wide URI wins over the variable
        _contract(tiny_config, uri, capsys)


def _contract(tiny_config, uri: str, capsys) -> None:
    cfg = tiny_config("model=he_cnn")
    torch.manual_seed(11)
    model = build_model(cfg.model).eval()
    run = _log_run(cfg, model, uri)
    view = site_view(cfg, "hospital_a")
    ensure_synthetic(Path(view.data.root), task=cfg.task, data=view.data)
    jpeg = sorted(Path(view.data.root).glob("test/PNEUMONIA/*.jpeg"))[0]

    proc = subprocess.Popen(
        [str(SERVER), "--model", f"runs:/{run}/model", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
    )
    seen: list[str] = []
    lines, reader = _lines(proc)
    try:
        url = _wait_for_url(proc, lines, seen)
        infer_main([str(jpeg), "--server", url, "--plaintext-model", f"runs:/{run}/model"])
        out = capsys.readouterr().out.strip().splitlines()
        (prediction,) = [line for line in out if " probability=" in line]
        assert re.search(r"probability=0\.\d+ decision=(NORMAL|PNEUMONIA)", prediction)
        assert out[-1].startswith("abs_diff=") and float(out[-1].split("=")[1]) <= 1e-3
        # The clinic's CLI refuses an unreachable server with one line and exit status 2.
        with pytest.raises(SystemExit) as stop:
            infer_main([str(jpeg), "--server", "http://127.0.0.1:9"])
        assert stop.value.code == 2 and "cannot reach http://127.0.0.1:9" in capsys.readouterr().err
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    reader.join(timeout=30)
    while not lines.empty():
        seen.append(lines.get())
    assert proc.returncode == 0 and "privmed-infer-server: stopped" in "".join(seen)
    assert "POST /v1/predict HTTP/1.1\" 200" in "".join(seen)  # the server's request log
