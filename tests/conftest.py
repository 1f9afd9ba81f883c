"""Shared fixtures: the real Hydra configs, composed and shrunk for fast tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from omegaconf import DictConfig

from common.run_config import compose_config

TINY_SITES = [f"federation.sites.hospital_{s}.data.{k}={v}" for s in "abc" for k, v in (("num_train", 64), ("num_test", 48))]


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture
def tiny_config(tmp_path) -> Callable[..., DictConfig]:
    """Compose the real config with small data and a private state root, plus overrides."""

    def make(*overrides: str, small_sites: bool = True) -> DictConfig:
        base = [
            f"state_root={tmp_path / 'state'}",
            f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "federation.num_rounds=2",
            "training.batch_size=16",
            "training.max_physical_batch_size=16",
            "simulation.show_progress=false",
            "device=cpu",
            # Tests compare runs; production noise is seeded from the OS (tested in test_site_runtime).
            "privacy.reproducible_noise=true",
            # The default is SecAgg+; tests of the round loop, the strategies and tracking assume the
            # plain path (faster). SecAgg+ tests say aggregation=secaggplus.
            "aggregation=plain",
            *(TINY_SITES if small_sites else []),
        ]
        return compose_config([*base, *overrides])

    return make
