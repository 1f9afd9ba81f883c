"""Segmentation predictions for NIfTI volumes and 2D files: training's preprocessing, the input's geometry."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from omegaconf import OmegaConf
from PIL import Image

from client.predict import main as predict_main
from common.data.preprocess import standardize_per_image
from common.data.volume_slices import case_samples
from common.models import build_model
from common.models.logged import describe_model, load_trained_model, log_trained_model
from common.prediction import choose_window, predict_file
from common.run_config import compose_config

pytestmark = pytest.mark.slow
SIZE = 32  # the smallest side a 5-stage UNet encoder takes


@pytest.fixture(scope="module")
def logged_unet(tmp_path_factory):
    """A UNet logged the way runs log their final model, and its segmentation config."""
    tmp = tmp_path_factory.mktemp("predict")
    cfg = compose_config([f"state_root={tmp / 'state'}", "task=segmentation", f"task.image_size={SIZE}"])
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch, _use_tracking_uri(uri):
        patch.chdir(tmp)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        client = MlflowClient(uri)
        run = client.create_run(client.create_experiment("predict")).info.run_id
        torch.manual_seed(5)
        model = build_model(cfg.model).eval()
        log_trained_model(model, run_id=run, described=describe_model(cfg, metrics={}))
        yield cfg, f"runs:/{run}/model"


def _volume(path: Path, shape: tuple[int, ...], seed: int) -> nib.Nifti1Image:
    """A CT-like int16 volume (HU) with a brighter blob, anisotropic voxels and a qform."""
    rng = np.random.default_rng(seed)
    data = rng.normal(-100, 150, size=shape)
    data[shape[0] // 4 : shape[0] // 2, shape[1] // 4 : shape[1] // 2] += 400
    img = nib.Nifti1Image(data.astype(np.int16), np.diag([0.7, 0.8, 2.5, 1.0]))
    img.set_qform(img.affine, code=1)
    nib.save(img, path)
    return img


def test_nifti_mask_uses_the_training_slices_and_keeps_the_geometry(logged_unet, tmp_path, capsys):
    cfg, uri = logged_unet
    trained = load_trained_model(uri)
    assert trained.task == "segmentation" and trained.windows == [[-500.0, 700.0]]
    path = tmp_path / "liver_7.nii.gz"
    source = _volume(path, (SIZE, SIZE, 3), seed=1)
    out = tmp_path / "mask.nii.gz"
    predict_main([str(path), "--model", uri, "--out", str(out)])
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{path}: mask={out} pixels: background=")
    mask = nib.load(out)
    labels = np.asarray(mask.dataobj)
    assert labels.shape == source.shape and labels.dtype == np.uint8
    np.testing.assert_allclose(mask.affine, source.affine)
    assert sum(int(part.split("=")[1]) for part in line.split("pixels: ")[1].split()) == labels.size
    # The slices the site reader makes of the same volume for training, through the model.
    data = OmegaConf.create(OmegaConf.to_container(cfg.task.data))
    samples = case_samples("liver_7", source.get_fdata(dtype=np.float32), np.zeros(source.shape), image_path=path,
                           label_path=path, task=cfg.task, data=data)
    images = standardize_per_image(torch.from_numpy(np.stack([s.image for s in samples]))[:, None])
    with torch.no_grad():
        expected = trained.module(images).argmax(dim=1).numpy()
    np.testing.assert_array_equal(np.moveaxis(labels, 2, 0), expected)


def test_masks_follow_the_input_size(logged_unet, tmp_path):
    _, uri = logged_unet
    trained = load_trained_model(uri)
    window = choose_window(trained)
    path = tmp_path / "case.nii"
    source = _volume(path, (40, 24, 2), seed=2)
    result = predict_file(trained, path, window=window, mask_path=tmp_path / "case_mask.nii.gz")
    mask = nib.load(result.mask_path)
    assert mask.shape == source.shape and set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
    assert sum(result.class_counts.values()) == 40 * 24 * 2
    picture = tmp_path / "slice.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (20, 30), dtype=np.uint8)).save(picture)
    result = predict_file(trained, picture, window=None, mask_path=tmp_path / "slice_mask.png")
    with Image.open(result.mask_path) as png:
        assert png.size == (30, 20) and png.mode == "L" and max(png.getdata()) <= 2


def test_window_and_bad_files_are_clear_errors(logged_unet, tmp_path):
    _, uri = logged_unet
    trained = load_trained_model(uri)
    mixed = type(trained)(**{**trained.__dict__, "windows": [[-500.0, 700.0], [0.0, 200.0]]})
    with pytest.raises(ValueError, match=r"different intensity windows .*pass --window LOW HIGH"):
        choose_window(mixed)
    assert choose_window(mixed, [-160, 240]) == [-160.0, 240.0] and choose_window(mixed, None) is None
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not nifti")
    with pytest.raises(ValueError, match=r"broken.nii.gz: unreadable NIfTI file"):
        predict_file(trained, broken, window=None)
    with pytest.raises(ValueError, match=r"absent.nii.gz: no such image file"):
        predict_file(trained, tmp_path / "absent.nii.gz", window=None)
