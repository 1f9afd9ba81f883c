"""Site datasets: synthetic generators now, real readers later, one ``SiteData`` interface."""

from common.data.site_data import SiteData, build_site_data

__all__ = ["SiteData", "build_site_data"]
