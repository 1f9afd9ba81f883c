"""DICOM with pydicom, on the real files shipped in the pydicom and nibabel wheels."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel.testing
import numpy as np
import pydicom
import pytest
from data_helpers import CLASSES, classification_cfg, xray_patients
from pydicom.data import get_testdata_file

from common.data import DataError, build_site_data
from common.data.dicom_folders import load_dicom_entry
from common.data.dicom_series import read_dicom, read_dicom_series
from common.data.synthetic_files import write_dicom_folders, write_dicom_image

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
# A real 5-slice CT series (16x16 px, Rescale Intercept -1024) shipped with pydicom.
CT_SERIES = PYDICOM_FILES / "dicomdirtests" / "98892001" / "CT5N"
NIBABEL_SERIES = [Path(nibabel.testing.data_path) / f"{i}.dcm" for i in (0, 1)]


def _local(name: str) -> Path:
    """A pydicom test file that ships in the wheel; never fetched over the network."""
    path = PYDICOM_FILES / name
    assert path.is_file(), f"{name} is not in the pydicom wheel"
    return path


def test_ct_is_rescaled_to_hounsfield_units():
    ds, hu = read_dicom(_local("CT_small.dcm"))
    assert ds.RescaleIntercept == -1024 and ds.RescaleSlope == 1
    np.testing.assert_allclose(hu, ds.pixel_array.astype(np.float32) - 1024)
    assert hu.shape == (128, 128) and hu.min() < -800  # air is about -1000 HU
    assert get_testdata_file("CT_small.dcm") == str(_local("CT_small.dcm"))


def test_mr_without_rescale_tags_keeps_stored_values():
    ds, pixels = read_dicom(_local("MR_small.dcm"))
    np.testing.assert_array_equal(pixels, ds.pixel_array.astype(np.float32))
    assert load_dicom_entry(_local("MR_small.dcm"))[0][0] == "4MR1"  # the PatientID tag


def test_series_is_ordered_by_position_not_file_name(tmp_path):
    # Copy the real series under names whose order is the reverse of the slice order.
    files = sorted(CT_SERIES.iterdir())
    for i, f in enumerate(files):
        shutil.copy(f, tmp_path / f"slice_{len(files) - i:02d}")
    volume = read_dicom_series(tmp_path)
    assert volume.volume.shape == (5, 16, 16) and volume.patient == "98890234"
    assert np.all(np.diff(volume.positions) > 0)
    # Ascending z: 2.5 mm apart, from -1.2375 to 8.7625 (ImagePositionPatient), Instance Numbers reversed.
    np.testing.assert_allclose(volume.positions, [-1.2375, 1.2625, 3.7625, 6.2625, 8.7625], atol=1e-4)
    first = pydicom.dcmread(volume.files[0])
    np.testing.assert_allclose(volume.volume[0], first.pixel_array * float(first.RescaleSlope) + float(first.RescaleIntercept))


def test_nibabel_two_slice_mr_series(tmp_path):
    for f in NIBABEL_SERIES:
        shutil.copy(f, tmp_path / f.name)
    volume = read_dicom_series(tmp_path)
    assert volume.volume.shape == (2, 256, 256) and volume.patient == "1234"
    assert volume.positions[1] - volume.positions[0] == pytest.approx(3.0, abs=1e-3)


def test_series_errors_name_the_file(tmp_path):
    shutil.copy(CT_SERIES / "2062", tmp_path / "a")
    write_dicom_image(tmp_path / "b", np.zeros((8, 8), np.int16), patient_id="98890234", position=(0, 0, 1),
                      series_uid=pydicom.dcmread(tmp_path / "a").SeriesInstanceUID)
    with pytest.raises(DataError, match="b: slice shape \\(8, 8\\) differs from a's \\(16, 16\\)"):
        read_dicom_series(tmp_path)
    write_dicom_image(tmp_path / "b", np.zeros((16, 16), np.int16), patient_id="98890234", position=(0, 0, 1))
    with pytest.raises(DataError, match="b: belongs to another series"):
        read_dicom_series(tmp_path)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda d: shutil.copy(_local("MR_truncated.dcm"), d / "x.dcm"), "x.dcm: unreadable DICOM pixel data"),
        (lambda d: (d / "x.dcm").write_bytes(b"\x00" * 300), "x.dcm: not a DICOM file"),
        (lambda d: shutil.copy(_local("rtplan.dcm"), d / "x.dcm"), "x.dcm: DICOM file has no pixel data"),
    ],
    ids=["truncated", "not-dicom", "no-pixels"],
)
def test_bad_dicom_files_name_the_file(tmp_path, make, match):
    make(tmp_path)
    with pytest.raises(DataError, match=match):
        read_dicom(tmp_path / "x.dcm")


def test_missing_patient_id_is_refused(tmp_path):
    ds = pydicom.dcmread(_local("CT_small.dcm"))
    del ds.PatientID
    ds.save_as(tmp_path / "anon.dcm")
    with pytest.raises(DataError, match="anon.dcm: DICOM file has no PatientID"):
        load_dicom_entry(tmp_path / "anon.dcm")


def test_class_folders_of_real_files_and_series(tmp_path):
    # NORMAL: pydicom's MR; PNEUMONIA: its CT and a whole series folder (every slice an image).
    for split in ("train", "test"):
        (tmp_path / split / "NORMAL").mkdir(parents=True)
        (tmp_path / split / "PNEUMONIA").mkdir(parents=True)
    shutil.copy(_local("MR_small.dcm"), tmp_path / "train/NORMAL/mr.dcm")
    shutil.copytree(CT_SERIES, tmp_path / "train/PNEUMONIA/series1")
    shutil.copy(_local("CT_small.dcm"), tmp_path / "test/PNEUMONIA/ct.dcm")
    ds = pydicom.dcmread(_local("MR_small.dcm"))
    ds.PatientID = "OTHER"
    ds.save_as(tmp_path / "test/NORMAL/mr2.dcm")
    task, data = classification_cfg("dicom_folders", root=str(tmp_path), window=[-1000, 1000])
    site = build_site_data(task, data)
    assert sorted(site.train.ids) == ["4MR1", "98890234"]
    series_patient = site.train.patients[site.train.ids.index("98890234")]
    assert len(series_patient.images) == 5 and series_patient.targets.tolist() == [1.0] * 5
    assert len(site.test) == 2


def test_synthetic_dicom_folders_round_trip(tmp_path):
    patients = xray_patients()
    write_dicom_folders(tmp_path, patients, classes=CLASSES)
    task, data = classification_cfg("dicom_folders", root=str(tmp_path))
    site = build_site_data(task, data)
    assert site.num_train_patients == 8 and site.train.num_images + len(site.test) == len(patients.images)
    _, hu = read_dicom(next(tmp_path.rglob("*.dcm")))
    assert hu.min() >= -1000 and hu.max() <= 0  # stored 0..4000 with slope 0.25, intercept -1000
