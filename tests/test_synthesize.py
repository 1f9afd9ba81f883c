"""Synthetic data written once, atomically, in real layouts; privmed-synth; the default job's path."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

import common.data.synthesize as synthesize
from common.data import DataError, build_site_data
from common.data.synth_cli import main as synth_main
from common.data.synthesize import MANIFEST, ensure_synthetic
from common.federation_config import site_view

SMALL = ["federation.sites.hospital_a.data.num_train=12", "federation.sites.hospital_a.data.num_test=4"]


def _site(tiny_config, *overrides):
    cfg = tiny_config(*SMALL, *overrides)
    return cfg, site_view(cfg, "hospital_a").data


def test_written_once_then_reused_and_other_settings_refused(tiny_config, tmp_path):
    cfg, data = _site(tiny_config)
    root = tmp_path / "kermany"
    assert ensure_synthetic(root, task=cfg.task, data=data) is True
    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest["format"] == "kermany" and manifest["num_train"] == 12
    assert ensure_synthetic(root, task=cfg.task, data=data) is False
    changed = OmegaConf.merge(data, {"seed": 7})
    with pytest.raises(DataError, match="kermany: holds synthetic data made with other settings \\(seed\\)"):
        ensure_synthetic(root, task=cfg.task, data=changed)
    (tmp_path / "real").mkdir()
    with pytest.raises(DataError, match="real: data.root exists and holds no privmed synthetic data"):
        ensure_synthetic(tmp_path / "real", task=cfg.task, data=data)


def test_a_process_that_loses_the_race_uses_the_winners_copy(tiny_config, tmp_path, monkeypatch):
    cfg, data = _site(tiny_config)
    root = tmp_path / "site"
    real_write = synthesize.write_synthetic

    def write_while_another_process_finishes(tmp, **kwargs):
        real_write(tmp, **kwargs)
        monkeypatch.setattr(synthesize, "write_synthetic", real_write)
        assert ensure_synthetic(root, task=cfg.task, data=data) is True  # the other process wins

    monkeypatch.setattr(synthesize, "write_synthetic", write_while_another_process_finishes)
    assert ensure_synthetic(root, task=cfg.task, data=data) is False
    assert [p.name for p in tmp_path.iterdir()] == ["site"]  # no half-written temp folder left
    assert build_site_data(cfg.task, data).num_train_patients == 12


@pytest.mark.parametrize("fmt", ["kermany", "medmnist", "dicom_folders"])
def test_every_classification_layout_is_written_and_read_back(tiny_config, fmt):
    cfg, data = _site(tiny_config, f"++federation.sites.hospital_a.data.format={fmt}")
    site = build_site_data(cfg.task, data)
    assert site.num_train_patients == (12 if fmt != "medmnist" else site.train.num_images)
    assert fmt in site.summary


@pytest.mark.parametrize("fmt,label_map", [("msd", None), ("brats", "{0: 0, 2: 1, 4: 2}")])
def test_every_segmentation_layout_is_written_and_read_back(tiny_config, fmt, label_map):
    extra = [f"++federation.sites.hospital_a.data.label_map={label_map}"] if label_map else []
    cfg, data = _site(tiny_config, "task=segmentation", f"++federation.sites.hospital_a.data.format={fmt}", *extra)
    site = build_site_data(cfg.task, data)
    assert site.num_train_patients + len(site.test) // 4 == 16  # 16 cases of 4 slices, split by case
    assert site.train.num_images == 4 * site.num_train_patients
    assert set(site.test.tensors[1].unique().tolist()) <= {0, 1, 2}


def test_unwritable_format_for_the_task_is_named(tiny_config):
    cfg, data = _site(tiny_config, "++federation.sites.hospital_a.data.format=msd")
    with pytest.raises(ValueError, match="data.format='msd' holds segmentation labels, but task.name='classification'"):
        build_site_data(cfg.task, OmegaConf.merge(data, {"synthesize": False, "root": "/nonexistent"}))
    with pytest.raises(ValueError, match="no synthetic classification data in format 'msd'"):
        build_site_data(cfg.task, data)


def test_privmed_synth_writes_the_configured_sites(tmp_path, capsys):
    args = [f"data_root={tmp_path}", "--site", "hospital_b", "federation.sites.hospital_b.data.num_train=6",
            "federation.sites.hospital_b.data.num_test=2"]
    assert synth_main(args) == 0
    assert (tmp_path / "classification/hospital_b/train/NORMAL").is_dir()
    assert synth_main(args) == 0
    out = capsys.readouterr().out
    assert "hospital_b: wrote kermany data at" in out and "hospital_b: already there:" in out
    assert synth_main([*args[:-1], "federation.sites.hospital_b.data.num_test=3"]) == 2
    assert "made with other settings (num_test)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        synth_main(["--site", "hospital_z"])
