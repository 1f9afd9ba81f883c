"""Kermany JPEG/PNG class folders: layout, patient ids, the nested archive and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_helpers import CLASSES, classification_cfg, write_jpeg, xray_patients

from common.data import DataError, build_site_data
from common.data.errors import BadFiles
from common.data.kermany import patient_id, read_kermany
from common.data.splits import split_samples
from common.data.synthetic_files import write_kermany


def _read(root: Path, **data):
    task, cfg = classification_cfg(root=str(root), **data)
    bad = BadFiles(cfg.on_bad_file)
    return read_kermany(root, task=task, data=cfg, bad=bad), bad


def _tiny_layout(root: Path) -> Path:
    for split, names in {
        "train": {"NORMAL": ["IM-0115-0001.jpeg", "IM-0115-0002.jpeg"], "PNEUMONIA": ["person1_bacteria_1.jpeg"]},
        "val": {"NORMAL": ["NORMAL2-IM-1427-0001.jpeg"], "PNEUMONIA": ["person2_virus_6.jpeg"]},
        "test": {"NORMAL": ["IM-0001-0001.jpeg"], "PNEUMONIA": ["person3_bacteria_10.jpeg", "person3_virus_11.jpeg"]},
    }.items():
        for cls, files in names.items():
            for name in files:
                write_jpeg(root / split / cls / name, mode="RGB" if cls == "PNEUMONIA" else "L")
    return root


@pytest.mark.parametrize(
    "name,expected",
    [
        ("person1_bacteria_1.jpeg", "person1"),
        ("person1_virus_6.jpeg", "person1"),
        ("person1946_bacteria_4874.jpeg", "person1946"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
    ],
)
def test_patient_ids_from_kermany_file_names(name, expected):
    assert patient_id(Path(name)) == expected


def test_custom_patient_pattern_and_name_without_id():
    assert patient_id(Path("site3_pat0042_img7.png"), r"^site3_(pat\d+)_") == "pat0042"
    with pytest.raises(DataError, match="scan.jpeg: file name carries no patient id"):
        patient_id(Path("scan.jpeg"))


def test_reads_labels_splits_and_patients(tmp_path):
    samples, bad = _read(_tiny_layout(tmp_path / "chest_xray"))
    by_file = {Path(s.source).name: s for s in samples}
    assert len(samples) == 8 and bad.count == 0
    assert by_file["IM-0115-0002.jpeg"].patient == "IM-0115" and by_file["IM-0115-0002.jpeg"].target == 0
    assert by_file["person3_virus_11.jpeg"].patient == "person3" and by_file["person3_virus_11.jpeg"].target == 1
    assert by_file["person2_virus_6.jpeg"].split == "val"
    assert all(s.image.shape == (16, 16) and s.image.dtype.name == "float32" for s in samples)


def test_doubly_nested_public_archive_is_found(tmp_path):
    _tiny_layout(tmp_path / "archive" / "chest_xray" / "chest_xray")
    (tmp_path / "archive" / "__MACOSX").mkdir()
    samples, _ = _read(tmp_path / "archive")
    assert len(samples) == 8


def test_synthetic_kermany_round_trip_keeps_patients_and_labels(tmp_path):
    patients = xray_patients()
    write_kermany(tmp_path, patients, classes=CLASSES, jpeg_quality=95)
    samples, _ = _read(tmp_path)
    assert len(samples) == len(patients.images)
    ids = {s.patient for s in samples}
    assert len(ids) == 12  # every synthetic patient, recognised from its Kermany-style names
    for s in samples:  # a patient's images all carry the patient's class
        assert {t.target for t in samples if t.patient == s.patient} == {s.target}


def test_patient_in_two_splits_is_refused_or_resplit(tmp_path):
    root = _tiny_layout(tmp_path)
    write_jpeg(root / "test" / "PNEUMONIA" / "person1_virus_9.jpeg")  # person1 is also in train
    task, data = classification_cfg(root=str(root), split="folders")
    with pytest.raises(DataError, match="person1_virus_9.jpeg: patient 'person1' is in both the train and test"):
        build_site_data(task, data)
    # Re-split by patient instead: person1's two images end up together, on one side.
    task, data = classification_cfg(root=str(root), split="by_patient", test_fraction=0.3)
    train, test = split_samples(_read(root)[0], mode="by_patient", test_fraction=0.3, seed=0)
    assert {s.patient for s in train}.isdisjoint({s.patient for s in test})
    person1 = [s.split for s in train if s.patient == "person1"] or [s.split for s in test if s.patient == "person1"]
    assert sorted(person1) == ["test", "train"]  # both images, from both folders, on one side
    assert len({s.patient for s in test}) == 2  # 30% of 6 patients
    site = build_site_data(task, data)
    assert site.num_train_patients == 4 and site.train.num_images + len(site.test) == 9


@pytest.mark.parametrize(
    "breakage,match",
    [
        (lambda r: (r / "train/NORMAL/IM-0115-0002.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg"),
         r"IM-0115-0002.jpeg: unreadable image"),
        (lambda r: (r / "train/NORMAL/IM-0115-0002.jpeg").write_bytes(
            (r / "train/NORMAL/IM-0115-0001.jpeg").read_bytes()[:200]), r"IM-0115-0002.jpeg: unreadable image"),
        (lambda r: (r / "train/NORMAL/notes.txt").write_text("x"), r"notes.txt: not an image file"),
        (lambda r: write_jpeg(r / "train/NORMAL/scan.jpeg"), r"scan.jpeg: file name carries no patient id"),
        (lambda r: (r / "test/COVID").mkdir(), r"test/COVID: unknown class folder; data.classes allows"),
        (lambda r: [p.unlink() for p in (r / "val/NORMAL").iterdir()], r"val/NORMAL: empty class folder"),
        (lambda r: [(r / "test/NORMAL/IM-0001-0001.jpeg").unlink(), (r / "test/NORMAL").rmdir()],
         r"test/NORMAL: missing class folder"),
    ],
    ids=["corrupt", "truncated", "not-an-image", "no-patient-id", "unknown-class", "empty-class", "missing-class"],
)
def test_bad_input_names_the_file_and_the_problem(tmp_path, breakage, match):
    root = _tiny_layout(tmp_path / "data")
    breakage(root)
    with pytest.raises(DataError, match=match):
        _read(root)


def test_skip_policy_counts_and_reports_bad_files(tmp_path, caplog):
    root = _tiny_layout(tmp_path / "data")
    (root / "train/NORMAL/IM-0115-0002.jpeg").write_bytes(b"garbage")
    (root / "train/PNEUMONIA/readme.txt").write_text("x")
    task, data = classification_cfg(root=str(root), on_bad_file="skip")
    site = build_site_data(task, data)
    assert len(site.skipped) == 2 and "skipped 2 bad file(s)" in site.summary
    assert any("IM-0115-0002.jpeg" in s for s in site.skipped)
    assert "skipped 2 bad file(s)" in caplog.text
    assert site.train.num_images == 4  # 5 train+val images, one skipped
    # Skipping never hides an empty class: a class left without images is still an error.
    for p in (root / "val/PNEUMONIA").iterdir():
        p.write_bytes(b"garbage")
    with pytest.raises(DataError, match="val/PNEUMONIA: empty class folder"):
        build_site_data(task, data)


def test_unknown_policy_is_named():
    with pytest.raises(ValueError, match="on_bad_file must be one of \\('error', 'skip'\\), got 'ignore'"):
        BadFiles("ignore")
