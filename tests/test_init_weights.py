"""model.init: initial weights from a file, an MLflow run, or torchvision's ImageNet cache file."""

from __future__ import annotations

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from torchvision.models import resnet18

from common.models import build_model, frozen_digest, initial_model
from common.models.init_weights import InitWeightsError, imagenet_file
from common.models.logged import describe_model, log_trained_model


def _saved_model(tiny_config, tmp_path, *overrides: str):
    """A model with other weights than the federation's seed would give, saved as a state dict."""
    cfg = tiny_config(*overrides)
    torch.manual_seed(7)
    model = build_model(cfg.model)
    path = tmp_path / "state_dict.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_init_from_a_state_dict_file_sets_the_frozen_weights_every_site_checks(tiny_config, tmp_path):
    source, path = _saved_model(tiny_config, tmp_path)
    cfg = tiny_config(f"model.init={path}")
    model = initial_model(cfg.model, cfg.seed)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)
    seeded = initial_model(tiny_config().model, cfg.seed)
    assert frozen_digest(model) != frozen_digest(seeded)
    assert any(p.requires_grad for p in model.parameters()) and not all(p.requires_grad for p in model.parameters())


def test_weights_of_another_model_are_refused_naming_the_file_and_keys(tiny_config, tmp_path):
    _, path = _saved_model(tiny_config, tmp_path, "model=small_cnn")
    cfg = tiny_config(f"model.init={path}")
    with pytest.raises(InitWeightsError, match=rf"model.init={path}: weights do not fit .*unexpected keys \['0.weight'"):
        initial_model(cfg.model, cfg.seed)
    missing = tiny_config(f"model.init={tmp_path / 'nowhere.pt'}")
    with pytest.raises(InitWeightsError, match=r"nowhere.pt: no such file here; every site needs the same file"):
        initial_model(missing.model, missing.seed)


def test_init_from_an_mlflow_run_reads_its_model(tiny_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source, path = _saved_model(tiny_config, tmp_path, "model=small_cnn")
    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("init")
    # An older run with model/state_dict.pt only (the fallback), and the MLflow Model runs log now.
    old = client.create_run(experiment).info.run_id
    client.log_artifact(old, str(path), "model")
    mlflow.set_tracking_uri(uri)
    new = client.create_run(experiment).info.run_id
    described = describe_model(tiny_config("model=small_cnn"), metrics={})
    log_trained_model(source, run_id=new, described=described, registered_model_name="init-source")
    for init in (f"runs:/{old}/model", f"runs:/{new}/model", "models:/init-source/1"):
        cfg = tiny_config("model=small_cnn", f"model.init={init}")
        model = initial_model(cfg.model, cfg.seed, tracking_uri=uri)
        for key, value in source.state_dict().items():
            torch.testing.assert_close(model.state_dict()[key], value)
    with pytest.raises(InitWeightsError, match="run 0+ has neither an MLflow model nor model/state_dict.pt"):
        cfg = tiny_config("model.init=runs:/" + "0" * 32 + "/model")
        initial_model(cfg.model, cfg.seed, tracking_uri=uri)
    with pytest.raises(InitWeightsError, match="models:/absent/1: no MLflow model there"):
        cfg = tiny_config("model.init=models:/absent/1")
        initial_model(cfg.model, cfg.seed, tracking_uri=uri)


@pytest.mark.parametrize("model_name,prefix", [("resnet18", ""), ("unet_resnet18", "encoder.")])
def test_imagenet_weights_come_from_the_hub_cache_with_a_grey_stem(tiny_config, tmp_path, monkeypatch, model_name, prefix):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = tiny_config(f"model={model_name}", "model.init=imagenet")
    expected = imagenet_file(18)
    assert str(expected).startswith(str(tmp_path / "torch"))
    with pytest.raises(InitWeightsError, match=rf"{expected} does not exist and nothing is downloaded"):
        initial_model(cfg.model, cfg.seed)
    # A stand-in for torchvision's file (same keys and shapes: RGB stem, BatchNorm, 1000 classes).
    torch.manual_seed(3)
    rgb = resnet18(weights=None).state_dict()
    expected.parent.mkdir(parents=True)
    torch.save(rgb, expected)
    model = initial_model(cfg.model, cfg.seed + 1).state_dict()
    torch.testing.assert_close(model[prefix + "conv1.weight"], rgb["conv1.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(model[prefix + "layer4.1.conv2.weight"], rgb["layer4.1.conv2.weight"])
    torch.testing.assert_close(model[prefix + "layer1.0.bn1.weight"], rgb["layer1.0.bn1.weight"])
