"""Models made DP-conformant for Opacus, and helpers to move their weights around."""

from common.models.dp_conformance import find_dp_violations, make_dp_conformant
from common.models.exchange import exchanged_state, frozen_digest, initial_model, load_exchanged
from common.models.factory import build_model

__all__ = [
    "build_model",
    "exchanged_state",
    "find_dp_violations",
    "frozen_digest",
    "initial_model",
    "load_exchanged",
    "make_dp_conformant",
]
