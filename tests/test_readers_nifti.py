"""NIfTI segmentation layouts (MSD, BraTS) with nibabel: slicing, windowing, label maps, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import nibabel.testing
import numpy as np
import pytest
from data_helpers import segmentation_cfg

from common.data import DataError, build_site_data
from common.data.brats import read_brats
from common.data.errors import BadFiles
from common.data.msd import read_msd
from common.data.synthetic_ct import LESION, LIVER
from common.data.synthetic_volumes import make_ct_cases, write_brats, write_msd

NIBABEL_DATA = Path(nibabel.testing.data_path)
MODALITIES = ["t1", "t1ce", "t2", "flair"]


def _cases(n=4, slices=3):
    return make_ct_cases(n, slices=slices, image_size=16, lesion_fraction=1.0, intensity_shift=0.0,
                         intensity_scale=1.0, noise_std=0.05, hu_scale=500, hu_offset=-150, seed=1)


def _msd(root: Path, n=4) -> Path:
    images, labels = _cases(n)
    write_msd(root, images, labels)
    return root


def _read_msd(root: Path, **data):
    task, cfg = segmentation_cfg(root=str(root), **data)
    bad = BadFiles(cfg.on_bad_file)
    return read_msd(root, task=task, data=cfg, bad=bad), bad


def test_msd_cases_become_patients_of_slices(tmp_path):
    root = _msd(tmp_path / "Task03_Liver")
    samples, _ = _read_msd(tmp_path)  # the task folder below root is found
    assert len(samples) == 12 and sorted({s.patient for s in samples}) == ["liver_0", "liver_1", "liver_2", "liver_3"]
    assert json.loads((root / "dataset.json").read_text())["labels"]["2"] == "cancer"
    assert {int(v) for s in samples for v in np.unique(s.target)} <= {0, 1, 2}
    task, data = segmentation_cfg(root=str(root), test_fraction=0.25)
    site = build_site_data(task, data)
    # One case = one patient; the split is by patient, 1 of 4 held out with all its slices.
    assert site.num_train_patients == 3 and len(site.test) == 3
    assert all(len(p.images) == 3 for p in site.train.patients)


def test_window_and_label_map_from_config(tmp_path):
    root = _msd(tmp_path)
    raw = nib.load(root / "imagesTr/liver_0.nii.gz").get_fdata()
    samples, _ = _read_msd(root, window=[-100.0, 100.0])
    assert min(s.image.min() for s in samples) >= 0.0 and max(s.image.max() for s in samples) <= 1.0
    assert raw.min() < -100 and raw.max() > 100  # the window really clips
    # Liver vs lesion -> one foreground class ("whole liver").
    merged, _ = _read_msd(root, label_map={0: 0, 1: 1, 2: 1})
    assert {int(v) for s in merged for v in np.unique(s.target)} == {0, 1}


def test_slices_are_coherent_volumes():
    images, labels = _cases(n=20, slices=5)
    liver = (labels == LIVER) | (labels == LESION)
    area = liver.sum(axis=(1, 2)).astype(float)  # [case, slice]
    # Neighbouring slices of a case overlap far more than slices of different cases.
    same = [((liver[c, :, :, z] & liver[c, :, :, z + 1]).sum() / max(liver[c, :, :, z].sum(), 1)) for c in range(20) for z in (1, 2)]
    other = [((liver[c, :, :, 2] & liver[c + 1, :, :, 2]).sum() / max(liver[c, :, :, 2].sum(), 1)) for c in range(19)]
    assert np.mean(same) > 0.85 and np.mean(same) > np.mean(other) + 0.15
    assert (area[:, 2] >= area[:, 0]).mean() > 0.8  # the organ tapers towards the edge slices
    assert images.dtype == np.int16 and images.shape == (20, 16, 16, 5)


def test_real_nibabel_volume_as_an_msd_case(tmp_path):
    # nibabel's bundled anatomical.nii (33x41x25, big-endian int16) with a label of the same shape.
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    shutil.copy(NIBABEL_DATA / "anatomical.nii", tmp_path / "imagesTr/brain_1.nii")
    img = nib.load(NIBABEL_DATA / "anatomical.nii")
    label = (img.get_fdata() > 20000).astype(np.uint8)
    nib.save(nib.Nifti1Image(label, img.affine), tmp_path / "labelsTr/brain_1.nii")
    # A 4D case (two volumes) from nibabel's example4d: the configured channel is used.
    shutil.copy(NIBABEL_DATA / "example4d.nii.gz", tmp_path / "imagesTr/brain_2.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((128, 96, 24), np.uint8), np.eye(4)), tmp_path / "labelsTr/brain_2.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [
        {"image": "./imagesTr/brain_1.nii", "label": "./labelsTr/brain_1.nii"},
        {"image": "./imagesTr/brain_2.nii.gz", "label": "./labelsTr/brain_2.nii.gz"},
    ]}))
    samples, _ = _read_msd(tmp_path, channel=1)
    assert len([s for s in samples if s.patient == "brain_1"]) == 25
    assert len([s for s in samples if s.patient == "brain_2"]) == 24
    ex = nib.load(NIBABEL_DATA / "example4d.nii.gz").get_fdata()[..., 1]
    assert samples[25].image.shape == (16, 16) and ex[..., 0].std() > 0
    fg, _ = _read_msd(tmp_path, slices="foreground", channel=1)
    assert 0 < len(fg) < 25 and {s.patient for s in fg} == {"brain_1"}


@pytest.mark.parametrize(
    "breakage,match",
    [
        (lambda r: (r / "labelsTr/liver_1.nii.gz").unlink(), "labelsTr/liver_1.nii.gz: missing label file"),
        (lambda r: (r / "imagesTr/liver_2.nii.gz").write_bytes(b"\x1f\x8b garbage"), "liver_2.nii.gz: unreadable NIfTI"),
        (lambda r: nib.save(nib.Nifti1Image(np.zeros((16, 16, 2), np.uint8), np.eye(4)), r / "labelsTr/liver_0.nii.gz"),
         r"labelsTr/liver_0.nii.gz: label shape \(16, 16, 2\) differs from image shape \(16, 16, 3\)"),
        (lambda r: nib.save(nib.Nifti1Image(np.full((16, 16, 3), 3, np.uint8), np.eye(4)), r / "labelsTr/liver_3.nii.gz"),
         r"labelsTr/liver_3.nii.gz: unknown label value\(s\) \[3\]; data.label_map allows \[0, 1, 2\]"),
        (lambda r: (r / "dataset.json").write_text("{not json"), "dataset.json: malformed dataset.json"),
        (lambda r: (r / "dataset.json").write_text('{"training": [{"image": "./imagesTr/liver_0.nii.gz"}]}'),
         "dataset.json: malformed dataset.json: training entry .* needs 'image' and 'label'"),
    ],
    ids=["missing-label", "corrupt", "shape-mismatch", "unknown-label", "bad-index", "entry-without-label"],
)
def test_bad_msd_input_names_the_file(tmp_path, breakage, match):
    root = _msd(tmp_path)
    breakage(root)
    with pytest.raises(DataError, match=match):
        _read_msd(root)


def test_skipped_case_is_counted(tmp_path):
    root = _msd(tmp_path)
    (root / "labelsTr/liver_1.nii.gz").unlink()
    samples, bad = _read_msd(root, on_bad_file="skip")
    assert bad.count == 1 and "liver_1" in bad.skipped[0] and "liver_1" not in {s.patient for s in samples}


def _brats(root: Path, n=3) -> Path:
    images, labels = _cases(n)
    write_brats(root, images, labels, modalities=MODALITIES)
    return root


def test_brats_cases_and_whole_tumour_mapping(tmp_path):
    root = _brats(tmp_path)
    seg = np.asarray(nib.load(root / "BraTS20_Training_001/BraTS20_Training_001_seg.nii.gz").dataobj)
    assert set(np.unique(seg)) <= {0, 2, 4} and 4 in seg
    task, data = segmentation_cfg("brats", root=str(root), label_map={0: 0, 1: 1, 2: 1, 4: 1})
    samples = read_brats(root, task=task, data=data, bad=BadFiles())
    assert sorted({s.patient for s in samples}) == [f"BraTS20_Training_00{i}" for i in (1, 2, 3)]
    assert {int(v) for s in samples for v in np.unique(s.target)} == {0, 1}
    # The default (MSD) map does not know BraTS value 4: refused, never silently background.
    task, data = segmentation_cfg("brats", root=str(root))
    with pytest.raises(DataError, match=r"_seg.nii.gz: unknown label value\(s\) \[4\]"):
        read_brats(root, task=task, data=data, bad=BadFiles())


def test_brats_missing_sequence_or_segmentation(tmp_path):
    root = _brats(tmp_path)
    task, data = segmentation_cfg("brats", root=str(root), label_map={0: 0, 1: 2, 2: 1, 4: 2})
    (root / "BraTS20_Training_002/BraTS20_Training_002_t1ce.nii.gz").unlink()
    with pytest.raises(DataError, match="BraTS20_Training_002_t1ce.nii.gz: missing t1ce image of case"):
        read_brats(root, task=task, data=data, bad=BadFiles())
    (root / "BraTS20_Training_002").rename(tmp_path / "moved")
    (root / "BraTS20_Training_003/BraTS20_Training_003_seg.nii.gz").unlink()
    with pytest.raises(DataError, match="BraTS20_Training_003_seg.nii.gz: missing label file"):
        read_brats(root, task=task, data=data, bad=BadFiles())
