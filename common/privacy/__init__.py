"""Privacy math: noise calibration and the per-site sample-level privacy ledger."""

from common.privacy.calibration import calibrate_noise_multiplier
from common.privacy.site_accountant import PrivacyBudgetExceeded, SiteAccountant

__all__ = ["PrivacyBudgetExceeded", "SiteAccountant", "calibrate_noise_multiplier"]
