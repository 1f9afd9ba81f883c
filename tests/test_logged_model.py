"""The final model of a real (tiny) federation as an MLflow Model: loaded, tagged, registered, served, predicted."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.models import Model
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from client.predict import main as predict_main
from common.data.readers import read_image_file
from common.federation_config import site_view
from common.models.logged import describe_model, load_trained_model, model_tags
from common.run_config import compose_config
from server.simulate import simulate

pytestmark = pytest.mark.slow
NAME = "privmed-tiny"
SITES = ("hospital_a", "hospital_b", "hospital_c")
# Bounded waits for `mlflow models serve` (imports torch and mlflow, loads the model).
SERVE_START_S = 240
REQUEST_S = 60


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """One tiny small_cnn federation (1 round), its model registered as NAME version 1."""
    tmp = tmp_path_factory.mktemp("logged")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    sites = [f"federation.sites.{s}.data.{k}={v}" for s in SITES for k, v in (("num_train", 32), ("num_test", 16))]
    cfg = compose_config([
        f"state_root={tmp / 'state'}", f"mlflow.tracking_uri={uri}", f"mlflow.registered_model_name={NAME}",
        "model=small_cnn", "federation.num_rounds=1", "training.batch_size=16", "training.max_physical_batch_size=16",
        "simulation.show_progress=false", "device=cpu", "privacy.reproducible_noise=true", "aggregation=plain", *sites,
    ])
    # sqlite stores put artifacts under ./mlruns; MLflow's process-wide URI is restored afterwards.
    with pytest.MonkeyPatch.context() as patch, _use_tracking_uri(uri):
        patch.chdir(tmp)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        report = simulate(cfg)
        yield cfg, report, MlflowClient(uri)


@pytest.fixture(scope="module")
def jpeg(federation):
    """A test image hospital_a wrote in the Kermany layout (a real JPEG file)."""
    cfg = federation[0]
    return sorted(Path(site_view(cfg, "hospital_a").data.root).glob("test/*/*.jpeg"))[0]


def test_load_model_predicts_on_the_task_input_shape(federation):
    cfg, report, _ = federation
    uri = f"runs:/{report.run_id}/model"
    module = mlflow.pytorch.load_model(uri)
    x = torch.randn(3, 1, cfg.task.image_size, cfg.task.image_size)
    with torch.no_grad():
        out = module(x)
    assert out.shape == (3, 1) and torch.isfinite(out).all()
    trained = load_trained_model(uri)
    with torch.no_grad():
        torch.testing.assert_close(trained.module(x), out)
    info = mlflow.models.get_model_info(uri)
    assert info.signature.inputs.inputs[0].shape == (-1, 1, 32, 32)
    requirements = Path(mlflow.artifacts.download_artifacts(f"{uri}/requirements.txt")).read_text()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements


def test_model_carries_privacy_tags_and_the_run_config(federation):
    cfg, report, client = federation
    run = client.get_run(report.run_id)
    assert run.data.metrics["sites_trained"] == len(SITES), "a site did not train: see the simulation's log"
    [output] = run.outputs.model_outputs
    tags = client.get_logged_model(output.model_id).tags
    assert tags["privmed.privacy"] == "dp" and tags["privmed.task"] == "classification"
    assert tags["privmed.image_size"] == "32"
    for site in SITES:
        eps = run.data.metrics[f"site.{site}.eps_sample"]
        assert 0 < eps <= cfg.privacy.target_epsilon
        assert float(tags[f"privmed.eps_sample.{site}"]) == pytest.approx(eps, rel=1e-5)
        assert tags[f"privmed.delta.{site}"] == "1e-05"
    assert "privmed.eps_client" not in tags  # no client-level DP in this run
    described = Model.load(f"runs:/{report.run_id}/model").metadata["privmed"]
    assert described["config"]["privacy"]["target_epsilon"] == cfg.privacy.target_epsilon
    assert described["model"]["_target_"] == cfg.model._target_
    version = client.get_model_version(NAME, "1")
    assert version.run_id == report.run_id
    assert {k: v for k, v in version.tags.items() if k.startswith("privmed.")} == {
        k: v for k, v in tags.items() if k.startswith("privmed.")
    }


def test_privmed_predict_prints_the_probability_of_a_jpeg(federation, jpeg, capsys):
    cfg, _, _ = federation
    predict_main([str(jpeg), "--model", f"models:/{NAME}/1"])
    line = capsys.readouterr().out.strip()
    module = load_trained_model(f"models:/{NAME}/1").module
    with torch.no_grad():
        expected = float(torch.sigmoid(module(read_image_file(jpeg, image_size=32, window=None))).item())
    assert line.startswith(f"{jpeg}: probability=") and "decision=" in line
    assert float(line.split("probability=")[1].split()[0]) == pytest.approx(expected, abs=1e-6)


def test_privmed_predict_bad_input_is_one_clear_error(federation, tmp_path, capsys):
    fake = tmp_path / "broken.jpeg"
    fake.write_text("not a picture")
    volume = tmp_path / "ct.nii.gz"
    volume.write_bytes(b"")
    cases = [
        ([str(fake), "--model", f"models:/{NAME}/1"], "DataError: .*broken.jpeg"),
        ([str(volume), "--model", f"models:/{NAME}/1"], "DataError: .*this model classifies 2D images"),
        ([str(fake), "--model", "models:/no-such-model/1"], "LoggedModelError: 'models:/no-such-model/1': no such model"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as stop:
            predict_main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("privmed-predict: ") and re.search(message, err), err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served(federation, tmp_path):
    """`mlflow models serve --env-manager local` of models:/NAME/1 on 127.0.0.1; killed afterwards."""
    port = _free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow.get_tracking_uri(),
               # the server execs `uvicorn`: this environment's scripts must be on PATH
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}/1", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVE_START_S
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"mlflow models serve not up after {SERVE_START_S} s"
                time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the uvicorn it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


def test_mlflow_models_serve_predicts_a_real_image_file(federation, jpeg, served):
    image = read_image_file(jpeg, image_size=32, window=None)
    body = json.dumps({"inputs": image.numpy().tolist()}).encode()
    request = urllib.request.Request(f"{served}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=REQUEST_S) as response:
        served_logit = np.asarray(json.loads(response.read())["predictions"], dtype=np.float32)
    with torch.no_grad():
        local = load_trained_model(f"models:/{NAME}/1").module(image).numpy()
    assert served_logit.shape == (1, 1)
    np.testing.assert_allclose(served_logit, local, atol=1e-5)


def test_tags_say_which_privacy_the_model_was_trained_under(tmp_path):
    """Without a federation: ε_client and its δ with client-level DP; no ε at all for privacy=none."""
    base = [f"state_root={tmp_path / 'state'}"]
    metrics = {f"site.{s}.eps_sample": 2.5 + i for i, s in enumerate(SITES)} | {"eps_client": 1.25}
    client_dp = model_tags(describe_model(compose_config([*base, "strategy=dp_fedavg"]), metrics=metrics))
    assert client_dp["privmed.eps_client"] == "1.25" and client_dp["privmed.delta_client"] == "0.001"
    assert client_dp["privmed.eps_sample.hospital_c"] == "4.5" and client_dp["privmed.eps_sample_max"] == "4.5"
    none = describe_model(compose_config([*base, "privacy=none"]), metrics={})
    assert model_tags(none) == {"privmed.privacy": "none", "privmed.task": "classification", "privmed.image_size": "32"}
    assert all(site == {"eps_sample": None, "delta": None} for site in none["sites"].values())
