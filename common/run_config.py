"""Compose the Hydra config outside ``privmed-simulate``: for `flwr run` apps and tests.

A deployed run carries Hydra overrides in its run config (``overrides = "task=segmentation
federation.num_rounds=3"``). Each hospital's SuperNode adds what the hospital owns in its node
config (``--node-config 'site="hospital_a" site-config="/etc/privmed/site.yaml" ...'``):

- ``state-root``: where the site's privacy ledger lives;
- ``site-config``: the hospital's own site file (same schema as ``conf/site/*.yaml``), merged
  over ``federation.sites.<site>``, so its data, privacy budget and noise settings win over
  whatever the coordinator submitted for that site;
- ``data-root``: the hospital's data directory (``data.root`` of its site).

Whatever the coordinator submits, ``allow_non_private`` (consent to ``privacy=none`` on real
files) is false for every site unless the hospital's own site file sets it.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from flwr.app import Context
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from common.federation_config import ConfigError, validate_config

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
DEFAULT_STATE_ROOT = Path.home() / ".privmed" / "state"
# Keys a hospital's site file may set: the schema of conf/site/*.yaml.
SITE_FILE_KEYS = ("name", "data", "privacy", "training", "state_dir", "allow_non_private")


def tracking_uri(mlflow_cfg: DictConfig) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the configured URI (a sqlite file by default)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or str(mlflow_cfg.tracking_uri)


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


def load_site_file(path: str | Path, site: str) -> dict[str, Any]:
    """Read a hospital's site file and check that it describes ``site``.

    Raises
    ------
    ConfigError
        If the file is missing, not a YAML mapping, has keys outside ``SITE_FILE_KEYS``, or
        its ``name`` is not ``site`` (a hospital must never train under another's settings).
    """
    path = Path(path)
    where = f"site config {path} (node config 'site-config')"
    if not path.is_absolute():
        raise ConfigError(f"{where}: use an absolute path; the ClientApp may run in another directory")
    if not path.is_file():
        raise ConfigError(f"{where}: no such file")
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # YAML and OmegaConf raise several unrelated types
        raise ConfigError(f"{where}: not valid YAML: {err}") from err
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{where}: must be a mapping with keys {', '.join(SITE_FILE_KEYS)}")
    content = OmegaConf.to_container(loaded, resolve=True)
    unknown = sorted(set(content) - set(SITE_FILE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; allowed: {', '.join(SITE_FILE_KEYS)}")
    if content.get("name") != site:
        raise ConfigError(f"{where}: name={content.get('name')!r} but this SuperNode is site {site!r}")
    return content


def apply_site_config(
    cfg: DictConfig, site: str, *, site_file: str | Path | None = None, data_root: str | Path | None = None
) -> DictConfig:
    """``cfg`` with the hospital's own site file and data root merged over its site.

    Parameters
    ----------
    cfg : DictConfig
        The composed config of the run (what the coordinator submitted).
    site : str
        The SuperNode's site; only this site's entry changes.
    site_file : str, Path or None
        The hospital's site file (see :func:`load_site_file`).
    data_root : str, Path or None
        The hospital's data directory, set as ``data.root`` of its site (wins over the file).

    Raises
    ------
    ConfigError
        If the site is not in the federation, the file is invalid, or the merged config
        fails validation (the message names the file).
    """
    sites = cfg.federation.get("sites") or {}
    if site not in sites:
        raise ConfigError(
            f"site {site!r} (node config 'site') is not an explicit site of this federation; "
            f"sites: {', '.join(sorted(sites)) or 'none'}"
        )
    patch: dict[str, Any] = load_site_file(site_file, site) if site_file is not None else {}
    if data_root is not None:
        if not Path(data_root).is_absolute():
            raise ConfigError(f"data-root {data_root!r} (node config): use an absolute path")
        patch.setdefault("data", {})["root"] = str(data_root)
    merged = OmegaConf.merge(OmegaConf.to_container(cfg), {"federation": {"sites": {site: patch}}})
    try:
        validate_config(merged)
    except ConfigError as err:
        source = f"site config {site_file}" if site_file is not None else "node config"
        raise ConfigError(f"{source} for site {site!r}: {err}") from err
    OmegaConf.set_readonly(merged, True)
    return merged


@lru_cache(maxsize=8)
def _cached(
    overrides: tuple[str, ...], site: str | None, site_file: str | None, data_root: str | None, stamp: int
) -> DictConfig:
    # ``stamp`` (the site file's mtime) is only part of the key: an edited file is re-read.
    cfg = without_coordinator_consent(compose_config(overrides))
    if site_file is None and data_root is None:
        return cfg
    if site is None:
        raise ConfigError("node config sets 'site-config' or 'data-root' but not 'site'")
    return apply_site_config(cfg, site, site_file=site_file, data_root=data_root)


def without_coordinator_consent(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``allow_non_private`` false for every site, explicit or generated.

    A deployed run's config comes from the coordinator (its overrides and its copy of
    ``conf/``); consent to train real patients without DP may only come from the hospital's own
    site file, merged after this (:func:`apply_site_config`).
    """
    fed = cfg.federation
    patch: dict[str, Any] = {"sites": {name: {"allow_non_private": False} for name in (fed.get("sites") or {})}}
    if fed.get("generated_sites"):
        patch["generated_sites"] = {"template": {"allow_non_private": False}}
    merged = OmegaConf.merge(OmegaConf.to_container(cfg), {"federation": patch})
    OmegaConf.set_readonly(merged, True)
    return merged


def node_config_key(node_config: Mapping[str, Any]) -> tuple[str | None, str | None, str | None, int]:
    """What of a node's config changes its composed config: (site, site file, data root, file mtime)."""
    site_file = node_config.get("site-config")
    data_root = node_config.get("data-root")
    stamp = 0
    if site_file is not None and Path(str(site_file)).is_file():
        stamp = Path(str(site_file)).stat().st_mtime_ns
    return (
        None if "site" not in node_config else str(node_config["site"]),
        None if site_file is None else str(site_file),
        None if data_root is None else str(data_root),
        stamp,
    )


def config_from_run_config(context: Context) -> DictConfig:
    """The config of a deployed run: run-config ``overrides`` plus what the node owns.

    The node's ``state-root``, ``site-config`` and ``data-root`` (module docstring) apply on
    top of the coordinator's overrides; in simulation nodes have none of them.
    """
    overrides = shlex.split(str(context.run_config.get("overrides", "")))
    if "state-root" in context.node_config:
        overrides.append(f"state_root={context.node_config['state-root']}")
    return _cached(tuple(overrides), *node_config_key(context.node_config))
