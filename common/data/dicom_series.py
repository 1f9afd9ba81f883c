"""DICOM files with pydicom: one image with its patient id, or a series stacked into a volume.

Stored pixel values become physical ones (e.g. Hounsfield units) through the file's
Rescale Slope and Intercept. Series slices are ordered by their position along the slice
normal (Image Position/Orientation Patient), not by file name or Instance Number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from common.data.errors import DataError


@dataclass(frozen=True)
class DicomVolume:
    """A series: ``volume [Z, H, W]`` float32 ordered by ``positions`` (mm along the normal)."""

    patient: str
    volume: np.ndarray
    positions: np.ndarray
    files: list[str]


def read_dicom(path: Path) -> tuple[pydicom.Dataset, np.ndarray]:
    """The dataset and its rescaled pixels (``[H, W]``, ``[frames, H, W]``; colour averaged to grey).

    Raises
    ------
    DataError
        If the file is not DICOM, has no pixel data, or its pixel data are truncated/undecodable.
    """
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.astype(np.float32)
    except InvalidDicomError as err:
        raise DataError(path, f"not a DICOM file ({err})") from err
    except AttributeError as err:
        raise DataError(path, "DICOM file has no pixel data") from err
    except (ValueError, OSError, NotImplementedError, RuntimeError, KeyError) as err:
        raise DataError(path, f"unreadable DICOM pixel data ({err})") from err
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        pixels = pixels.mean(axis=-1)
    slope, intercept = float(ds.get("RescaleSlope", 1.0) or 1.0), float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return ds, pixels * slope + intercept


def dicom_patient_id(ds: pydicom.Dataset, path: Path) -> str:
    """The PatientID tag; a file without one cannot be assigned to a privacy unit."""
    patient = str(ds.get("PatientID", "") or "").strip()
    if not patient:
        raise DataError(path, "DICOM file has no PatientID: it cannot be assigned to a patient")
    return patient


def read_dicom_series(folder: Path) -> DicomVolume:
    """Stack the slices of one series folder into a volume ordered by slice position.

    Raises
    ------
    DataError
        Empty folder, files of several series or patients, slices of different shapes, or an
        unreadable slice.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(folder, "empty DICOM series folder")
    slices = []
    for path in files:
        ds, pixels = read_dicom(path)
        if pixels.ndim != 2:
            raise DataError(path, f"series slice must be a single 2D frame, got shape {pixels.shape}")
        slices.append((path, ds, pixels))
    first_path, first, first_pixels = slices[0]
    patient = dicom_patient_id(first, first_path)
    for path, ds, pixels in slices[1:]:
        if ds.get("SeriesInstanceUID") != first.get("SeriesInstanceUID"):
            raise DataError(path, f"belongs to another series than {first_path.name}: one series per folder")
        if dicom_patient_id(ds, path) != patient:
            raise DataError(path, f"PatientID differs from {first_path.name}'s ({patient!r})")
        if pixels.shape != first_pixels.shape:
            raise DataError(path, f"slice shape {pixels.shape} differs from {first_path.name}'s {first_pixels.shape}")
    positions = np.array([_slice_position(ds, path) for path, ds, _ in slices])
    order = np.argsort(positions, kind="stable")
    return DicomVolume(
        patient=patient,
        volume=np.stack([slices[i][2] for i in order]),
        positions=positions[order],
        files=[str(slices[i][0]) for i in order],
    )


def _slice_position(ds: pydicom.Dataset, path: Path) -> float:
    """Distance along the slice normal; Instance Number where the geometry tags are missing."""
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if ipp is not None and iop is not None and len(iop) == 6:
        normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
        return float(np.dot(normal, np.asarray(ipp, float)))
    if "InstanceNumber" in ds:
        return float(ds.InstanceNumber)
    raise DataError(path, "slice has neither Image Position/Orientation Patient nor Instance Number to order it")
