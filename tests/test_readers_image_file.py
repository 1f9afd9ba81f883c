"""One image file for inference is read exactly as training reads it (common.data.readers.read_image_file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.data.errors import DataError
from common.data.readers import read_image_file
from common.data.site_data import build_site_data
from common.data.synthetic_files import write_dicom_image
from common.federation_config import site_view


def test_a_test_jpeg_reads_as_the_same_tensor_the_site_evaluates(tiny_config):
    cfg = tiny_config()
    view = site_view(cfg, "hospital_a")
    data = build_site_data(cfg.task, view.data)  # writes the site's Kermany JPEGs, then reads them
    evaluated = data.test.tensors[0]
    files = sorted(Path(view.data.root).glob("test/*/*.jpeg"))
    assert len(files) == len(evaluated)
    for path in files[:4]:
        image = read_image_file(path, image_size=cfg.task.image_size, window=view.data.window)
        assert image.shape == (1, 1, cfg.task.image_size, cfg.task.image_size)
        assert float((evaluated - image[0]).abs().amax(dim=(1, 2, 3)).min()) == 0.0


def test_single_dicom_file_is_windowed_and_standardised(tmp_path):
    pixels = np.linspace(0, 4000, 40 * 40).reshape(40, 40).astype(np.uint16)
    path = tmp_path / "study.dcm"
    write_dicom_image(path, pixels, patient_id="anonymous", slope=0.5, intercept=-1000.0)
    image = read_image_file(path, image_size=16, window=[-1000, 0])
    assert image.shape == (1, 1, 16, 16)
    assert float(image.mean()) == pytest.approx(0.0, abs=1e-5) and float(image.std()) == pytest.approx(1.0, abs=1e-4)


def test_missing_or_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match="no such image file"):
        read_image_file(tmp_path / "absent.jpeg", image_size=16, window=None)
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpeg: unreadable image"):
        read_image_file(broken, image_size=16, window=None)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(DataError, match="notes.txt: not a DICOM file"):
        read_image_file(other, image_size=16, window=None)
