"""Compose the Hydra config outside ``privmed-simulate``: for `flwr run` apps and tests.

A deployed run carries Hydra overrides in its run config (``overrides = "task=segmentation
federation.num_rounds=3"``); a SuperNode may add a ``state-root`` in its node config.
"""

from __future__ import annotations

import shlex
from functools import lru_cache
from pathlib import Path

from flwr.app import Context
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
DEFAULT_STATE_ROOT = Path.home() / ".privmed" / "state"


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra ``overrides``, fully resolved.

    ``state_root`` defaults to ``~/.privmed/state`` here (there is no Hydra output dir
    outside ``privmed-simulate``); pass ``state_root=...`` to change it.
    """
    overrides = list(overrides)
    if not any(o.startswith("state_root=") for o in overrides):
        overrides.append(f"state_root={DEFAULT_STATE_ROOT}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    OmegaConf.set_readonly(resolved, True)
    return resolved


@lru_cache(maxsize=8)
def _cached(overrides: tuple[str, ...]) -> DictConfig:
    return compose_config(overrides)


def config_from_run_config(context: Context) -> DictConfig:
    """The config of a deployed run: run-config ``overrides`` plus the node's ``state-root``."""
    overrides = shlex.split(str(context.run_config.get("overrides", "")))
    if "state-root" in context.node_config:
        overrides.append(f"state_root={context.node_config['state-root']}")
    return _cached(tuple(overrides))
