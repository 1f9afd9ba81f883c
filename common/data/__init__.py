"""Site datasets: real readers (Kermany, DICOM, MedMNIST, MSD, BraTS) and synthetic data, one ``SiteData``."""

from common.data.errors import DataError
from common.data.patients import PatientDataset
from common.data.site_data import SiteData, build_site_data

__all__ = ["DataError", "PatientDataset", "SiteData", "build_site_data"]
