"""Synthetic X-ray patients written as files in real layouts (Kermany JPEGs, MedMNIST, DICOM).

The default job reads these with the real readers, so the path a hospital's files take
(decode, patient ids, splits, preprocessing) is the path every run exercises.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from common.data.synthetic_xray import make_xray_images

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass(frozen=True)
class XrayPatients:
    """Synthetic patients: ``images [n, S, S]`` in [0, 1], ``owner[i]`` the patient of image i and
    ``number[i]`` its 1-based number within the patient, ``labels[p]`` and ``split[p]`` per patient."""

    images: np.ndarray
    owner: np.ndarray
    number: np.ndarray
    labels: np.ndarray
    split: list[str]


def make_xray_patients(
    *,
    num_train: int,
    num_test: int,
    val_fraction: float,
    images_per_patient: tuple[int, int],
    image_size: int,
    positive_fraction: float,
    label_noise: float,
    intensity_shift: float,
    intensity_scale: float,
    noise_std: float,
    pixel_window: tuple[float, float],
    seed: int,
) -> XrayPatients:
    """Patients with ``images_per_patient`` [min, max] images each, all of the patient's class.

    Label noise flips whole patients (a misread case), so a patient's images never disagree.
    """
    rng = np.random.default_rng(seed)
    n = num_train + num_test
    labels = (rng.random(n) < positive_fraction).astype(np.int64)
    counts = rng.integers(images_per_patient[0], images_per_patient[1] + 1, n)
    owner = np.repeat(np.arange(n), counts)
    images = np.zeros((len(owner), image_size, image_size), np.float32)
    common = dict(
        image_size=image_size, intensity_shift=intensity_shift, intensity_scale=intensity_scale,
        noise_std=noise_std, label_noise=0.0,
    )
    for cls in (0, 1):
        rows = np.flatnonzero(labels[owner] == cls)
        if len(rows):
            pool, _ = make_xray_images(len(rows), positive_fraction=float(cls), seed=seed * 2 + cls, **common)
            images[rows] = pool[:, 0]
    labels = np.where(rng.random(n) < label_noise, 1 - labels, labels)
    low, high = pixel_window
    images = np.clip((images - low) / (high - low), 0.0, 1.0)
    split = ["train"] * num_train + ["test"] * num_test
    if val_fraction > 0:  # per class, as in the public archive: every val/ class folder has patients
        for cls in (0, 1):
            members = [p for p in range(num_train) if labels[p] == cls]
            for p in members[: max(1, round(val_fraction * len(members))) if len(members) > 1 else 0]:
                split[p] = "val"
    number = np.arange(len(owner)) - np.concatenate([[0], np.cumsum(counts)[:-1]])[owner] + 1
    return XrayPatients(images=images, owner=owner, number=number, labels=labels, split=split)


def kermany_name(patient: int, image: int, label: int) -> str:
    """Kermany-style file name: ``person7_bacteria_2.jpeg``, ``IM-0007-0002.jpeg``, ``NORMAL2-IM-...``."""
    if label == 1:
        return f"person{patient}_{'virus' if patient % 3 == 0 else 'bacteria'}_{image}.jpeg"
    prefix = "NORMAL2-" if patient % 4 == 0 else ""
    return f"{prefix}IM-{patient:04d}-{image:04d}.jpeg"


def write_kermany(root: Path, patients: XrayPatients, *, classes: list[str], jpeg_quality: int) -> None:
    """``<root>/{train,val,test}/{NORMAL,PNEUMONIA}/<kermany name>.jpeg`` (8-bit grey JPEG)."""
    for p, k, image in zip(patients.owner, patients.number, patients.images):
        label = int(patients.labels[p])
        folder = root / patients.split[p] / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.rint(image * 255).astype(np.uint8), mode="L").save(
            folder / kermany_name(int(p) + 1, int(k), label), quality=jpeg_quality
        )


def write_medmnist(path: Path, patients: XrayPatients) -> None:
    """A MedMNIST-style ``.npz`` (uint8 ``[N, S, S]`` images, ``[N, 1]`` labels); ``val`` kept separate."""
    arrays = {}
    for split in ("train", "val", "test"):
        rows = [i for i, p in enumerate(patients.owner) if patients.split[p] == split]
        arrays[f"{split}_images"] = np.rint(patients.images[rows] * 255).astype(np.uint8)
        arrays[f"{split}_labels"] = patients.labels[patients.owner[rows]].reshape(-1, 1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def write_dicom_folders(root: Path, patients: XrayPatients, *, classes: list[str]) -> None:
    """``<root>/{train,val,test}/<CLASS>/<patient>_<k>.dcm``: 16-bit DICOM with PatientID and a rescale."""
    for p, k, image in zip(patients.owner, patients.number, patients.images):
        folder = root / patients.split[p] / classes[int(patients.labels[p])]
        folder.mkdir(parents=True, exist_ok=True)
        write_dicom_image(folder / f"P{int(p) + 1:05d}_{k}.dcm", np.rint(image * 4000).astype(np.uint16),
                          patient_id=f"P{int(p) + 1:05d}", slope=0.25, intercept=-1000.0)


def write_dicom_image(
    path: Path, pixels: np.ndarray, *, patient_id: str, slope: float = 1.0, intercept: float = 0.0,
    position: tuple[float, float, float] | None = None, series_uid: str | None = None,
) -> None:
    """One uncompressed monochrome DICOM file (``pixels`` uint16 or int16, 2D)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = patient_id, "OT"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, int(pixels.dtype == np.int16)
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if position is not None:
        ds.ImagePositionPatient = list(position)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
