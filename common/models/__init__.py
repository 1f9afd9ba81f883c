"""Models made DP-conformant for Opacus, and helpers to move their weights around."""

from common.models.dp_conformance import find_dp_violations, make_dp_conformant
from common.models.factory import build_model
from common.models.weights import unwrap_state_dict

__all__ = ["build_model", "find_dp_violations", "make_dp_conformant", "unwrap_state_dict"]
