"""The served model loads from a run's state dict, an MLflow Model, or local files, with its input facts."""

from __future__ import annotations

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from omegaconf import OmegaConf

from common.he.model_source import ModelSourceError, load_model
from common.he.plan import plan_from_model
from common.models import build_model
from common.models.logged import describe_model, log_trained_model
from common.run_config import compose_config


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A he_cnn and its config, with MLflow pointed at one sqlite store for the module."""
    tmp = tmp_path_factory.mktemp("source")
    cfg = compose_config([f"state_root={tmp / 'state'}", "model=he_cnn", "+federation.sites.hospital_b.data.window=[0,200]"])
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    # MLflow's process-wide URI, restored afterwards: other test modules log elsewhere.
    with pytest.MonkeyPatch.context() as patch, _use_tracking_uri(uri):
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        torch.manual_seed(0)
        yield cfg, build_model(cfg.model).eval(), MlflowClient(uri)


def _save_state(folder, cfg, model):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "state_dict.pt")
    (folder / "model_config.yaml").write_text(OmegaConf.to_yaml(cfg.model))
    return folder


def _same_output(a, b, size=32):
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        return torch.allclose(a(x), b(x))


def test_run_with_state_dict_and_config(logged, tmp_path):
    cfg, model, client = logged
    run = client.create_run(client.create_experiment("he-source")).info.run_id
    client.log_artifacts(run, str(_save_state(tmp_path / "m", cfg, model)), "model")
    client.log_text(run, OmegaConf.to_yaml(cfg), "config/resolved_config.yaml")
    loaded = load_model(f"runs:/{run}/model")
    assert _same_output(loaded.module, model) and not loaded.module.training
    assert loaded.image_size == 32 and loaded.class_names == ["NORMAL", "PNEUMONIA"]
    assert loaded.windows == [None, [0.0, 200.0]]  # hospital_b's own window, hospital_a/c the task's


def test_mlflow_model_in_a_run(logged):
    cfg, model, _ = logged
    with mlflow.start_run() as run:
        example = torch.zeros(1, 1, 32, 32).numpy()
        mlflow.pytorch.log_model(model, name="model", pip_requirements=[], serialization_format="pickle",
                                 input_example=example)
        mlflow.log_text(OmegaConf.to_yaml(cfg), "config/resolved_config.yaml")
    loaded = load_model(f"runs:/{run.info.run_id}/model")
    assert _same_output(loaded.module, model) and loaded.image_size == 32


def test_privmed_logged_model_is_rebuilt_for_the_plan(logged):
    """The final model as runs log it (pt2 MLflow Model): the served module is he_cnn's own layers."""
    cfg, model, client = logged
    run = client.create_run(client.create_experiment("he-logged")).info.run_id
    log_trained_model(model, run_id=run, described=describe_model(cfg, metrics={}), registered_model_name="he-source")
    for reference in (f"runs:/{run}/model", "models:/he-source/1"):
        loaded = load_model(reference)
        assert _same_output(loaded.module, model) and loaded.image_size == 32
        assert loaded.windows == [None, [0.0, 200.0]] and loaded.class_names == ["NORMAL", "PNEUMONIA"]
        plan_from_model(loaded.module, image_size=loaded.image_size)


def test_local_state_dict_file_or_folder(logged, tmp_path):
    cfg, model, _ = logged
    folder = _save_state(tmp_path / "model", cfg, model)
    for reference in (folder, folder / "state_dict.pt"):
        loaded = load_model(str(reference))
        assert _same_output(loaded.module, model) and loaded.image_size == 32 and loaded.windows == []


def test_nothing_loadable_is_one_clear_error(logged, tmp_path):
    cfg, model, _ = logged
    with pytest.raises(ModelSourceError, match="no such model folder"):
        load_model(str(tmp_path / "absent"))
    with pytest.raises(ModelSourceError, match="not found in MLflow"):
        load_model("runs:/0123456789abcdef/model")
    folder = _save_state(tmp_path / "other", cfg, model)
    torch.save({"weight": torch.zeros(1)}, folder / "state_dict.pt")
    with pytest.raises(ModelSourceError, match="does not match"):
        load_model(str(folder))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="neither an MLflow Model"):
        load_model(str(tmp_path / "empty"))
