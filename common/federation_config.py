"""Resolve the federation's sites from the composed config, and reject impossible configs early.

Config enters the code once, here: every site gets one self-contained view
(``name``, ``data``, ``privacy``, ``training``, ``state_dir``) in which the site's own
keys override the global ``privacy`` and ``training`` groups.
"""

from __future__ import annotations

import os

import numpy as np
from omegaconf import DictConfig, OmegaConf


AGGREGATIONS = ("plain", "secaggplus")
# training.grad_sample_mode values (client/private_training.py; kept here so config checks need no torch).
GRAD_SAMPLE_MODES = ("auto", "hooks", "functorch", "ew", "ghost", "bk")


class ConfigError(ValueError):
    """The composed configuration cannot be run; the message names the key and the fix."""


class NonPrivateRefused(ConfigError):
    """A site reading real patient files was asked to train without DP and has not allowed it."""


def is_private(privacy: DictConfig) -> bool:
    """False for the non-private reference (``privacy=none``)."""
    return bool(privacy.get("enabled", True))


def reads_real_files(data: DictConfig) -> bool:
    """True unless the site's data is privmed's own synthetic data (in memory or written by it)."""
    return data.format != "synthetic" and not data.get("synthesize")


def check_non_private_allowed(view: DictConfig) -> None:
    """Raise :class:`NonPrivateRefused` if ``view`` would train real patients without DP unasked.

    In a deployment the coordinator submits the config; only the hospital's own site file can
    set ``allow_non_private`` (:func:`common.run_config.config_from_run_config` enforces that).
    """
    if not is_private(view.privacy) and reads_real_files(view.data) and not view.allow_non_private:
        raise NonPrivateRefused(
            f"site {view.name} reads real patient files and refuses privacy=none (training without DP); "
            "only the hospital can allow it, with allow_non_private: true in its own site file"
        )


def site_names(cfg: DictConfig) -> list[str]:
    """Site names in a fixed order (partition i of the simulation is site i)."""
    return sorted(expand_sites(cfg.federation))


def expand_sites(federation: DictConfig) -> dict[str, DictConfig]:
    """Explicit sites plus those generated from ``federation.generated_sites``."""
    sites = {str(k): v for k, v in (federation.get("sites") or {}).items()}
    gen = federation.get("generated_sites")
    if gen:
        rng = np.random.default_rng(gen.generator_seed)
        width = len(str(gen.count - 1))
        for i in range(gen.count):
            name = f"site_{i:0{width}d}"
            site = OmegaConf.to_container(gen.template, resolve=True)
            site["name"] = name
            site["data"].update(
                seed=gen.base_seed + i,
                positive_fraction=float(rng.uniform(*gen.positive_fraction)),
                lesion_fraction=float(rng.uniform(*gen.lesion_fraction)),
                intensity_shift=float(rng.normal(0.0, gen.shift_std)),
            )
            sites[name] = OmegaConf.create(site)
    return sites


def site_view(cfg: DictConfig, name: str) -> DictConfig:
    """The one config a site trains with: its name, ``index`` in the fixed site order, data,
    merged privacy and training, and state dir."""
    sites = expand_sites(cfg.federation)
    if name not in sites:
        raise ConfigError(f"unknown site {name!r}; this federation has: {', '.join(sorted(sites))}")
    return _view(cfg, name, sites[name], index=sorted(sites).index(name))


def site_views(cfg: DictConfig) -> dict[str, DictConfig]:
    """Every site's view (sites expanded once: a federation may have hundreds)."""
    ordered = sorted(expand_sites(cfg.federation).items())
    return {name: _view(cfg, name, site, index=i) for i, (name, site) in enumerate(ordered)}


def _view(cfg: DictConfig, name: str, site: DictConfig, *, index: int) -> DictConfig:
    if site.get("name", name) != name:
        raise ConfigError(f"site file for {name!r} says name={site.name!r}; they must agree")
    state_dir = site.get("state_dir") or f"{cfg.state_root}/{name}"
    # The task's reader defaults (format, classes, window, ...), then the site's own data keys.
    data = OmegaConf.to_container(
        OmegaConf.merge(
            OmegaConf.to_container(cfg.task.get("data") or {}, resolve=True),
            OmegaConf.to_container(site.data, resolve=True),
        )
    )
    if data.get("root"):
        # The default root is "<state_root>/../data": ".." must not depend on <state_root> existing.
        data["root"] = os.path.normpath(str(data["root"]))
    return OmegaConf.create(
        {
            "name": name,
            "index": index,
            "data": data,
            "privacy": OmegaConf.to_container(OmegaConf.merge(cfg.privacy, site.get("privacy") or {}), resolve=True),
            "training": OmegaConf.to_container(
                OmegaConf.merge(cfg.training, site.get("training") or {}), resolve=True
            ),
            "state_dir": str(state_dir),
            "allow_non_private": bool(site.get("allow_non_private", False)),
        }
    )


def adaptive_count_stddev(client_dp: DictConfig, num_sites: int) -> float:
    """Noise std on the clipped-update count for adaptive clipping (see the strategy config)."""
    if client_dp.clipped_count_stddev is not None:
        return float(client_dp.clipped_count_stddev)
    return max(num_sites / 20, float(client_dp.noise_multiplier))


def check_train_size(view: DictConfig, num_train: int) -> None:
    """Raise :class:`ConfigError` if a site's δ or batch size does not fit its ``num_train`` patients."""
    p, t, where = view.privacy, view.training, f"site {view.name}"
    if num_train < 1:
        raise ConfigError(f"{where}: no training patients")
    if is_private(p) and p.delta >= 1.0 / num_train:
        raise ConfigError(
            f"{where}: privacy.delta={p.delta:g} must be below 1/num_train={1 / num_train:.2g}, "
            "else one patient's data could leak outright"
        )
    if not 1 <= t.batch_size <= num_train:
        raise ConfigError(f"{where}: training.batch_size must be in [1, num_train={num_train}], got {t.batch_size}")


def _check_privacy(p: DictConfig, where: str) -> None:
    if p.target_epsilon <= 0:
        raise ConfigError(f"{where}: privacy.target_epsilon must be > 0, got {p.target_epsilon}")
    if not 0 < p.delta < 1:
        raise ConfigError(f"{where}: privacy.delta must be in (0, 1), got {p.delta}")
    if p.max_grad_norm <= 0:
        raise ConfigError(f"{where}: privacy.max_grad_norm must be > 0, got {p.max_grad_norm}")
    if p.noise_multiplier is not None and p.noise_multiplier <= 0:
        raise ConfigError(f"{where}: privacy.noise_multiplier must be > 0 or null, got {p.noise_multiplier}")


def _check_training(t: DictConfig, where: str) -> None:
    if t.max_physical_batch_size < 1 or t.local_epochs < 1:
        raise ConfigError(f"{where}: training.max_physical_batch_size and local_epochs must be >= 1")
    if t.grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ConfigError(
            f"{where}: training.grad_sample_mode={t.grad_sample_mode!r} is unknown; valid: {', '.join(GRAD_SAMPLE_MODES)}"
        )
    if t.grad_sample_chunk_mib <= 0:
        raise ConfigError(f"{where}: training.grad_sample_chunk_mib must be > 0, got {t.grad_sample_chunk_mib}")
    threads = t.get("num_threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"{where}: training.num_threads must be an integer >= 1 or null, got {threads!r}")


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for configs that cannot run or would weaken privacy silently."""
    fed = cfg.federation
    if fed.num_rounds < 1:
        raise ConfigError(f"federation.num_rounds must be >= 1, got {fed.num_rounds}")
    views = site_views(cfg)
    names = list(views)
    if len(names) < 2:
        raise ConfigError(f"a federation needs at least 2 sites, got {len(names)}: {names}")
    for name, view in views.items():
        p, t, d = view.privacy, view.training, view.data
        where = f"site {name}"
        if is_private(p):
            _check_privacy(p, where)
        # Real files: N is known only once they are read (checked there, by the site runtime).
        if not reads_real_files(d):
            check_train_size(view, d.num_train)
        _check_training(t, where)
    strategy = cfg.strategy
    if strategy.client_dp is not None:
        if strategy.fraction_train != 1.0:
            raise ConfigError(
                "client-level DP is accounted without sampling amplification and needs every site in "
                f"every round: set strategy.fraction_train=1.0 (got {strategy.fraction_train})"
            )
        if strategy.client_dp.noise_multiplier <= 0:
            raise ConfigError(
                f"strategy.client_dp.noise_multiplier must be > 0, got {strategy.client_dp.noise_multiplier}"
            )
        if strategy.client_dp.clipping == "adaptive":
            count_std = adaptive_count_stddev(strategy.client_dp, len(names))
            if strategy.client_dp.noise_multiplier >= 2 * count_std:
                raise ConfigError(
                    f"strategy.client_dp.noise_multiplier={strategy.client_dp.noise_multiplier:g} needs "
                    f"clipped_count_stddev > {strategy.client_dp.noise_multiplier / 2:g} (got {count_std:g}): "
                    "adaptive clipping splits the noise between the clipped count and the update"
                )
        if not 0 < strategy.client_dp.delta < 1.0 / len(names):
            raise ConfigError(
                f"strategy.client_dp.delta={strategy.client_dp.delta:g} must be in (0, 1/sites={1 / len(names):.2g})"
            )
    aggregation = cfg.get("aggregation")
    from common.sparse_update import check_sharing_config  # imports this module

    check_sharing_config(strategy, None if aggregation is None else aggregation.name)
    if aggregation is not None and aggregation.name not in AGGREGATIONS:
        raise ConfigError(f"aggregation={aggregation.name!r} is unknown; valid: {', '.join(AGGREGATIONS)}")
    if aggregation is not None and aggregation.name == "secaggplus":
        from common.secagg_params import client_clip_norm, secagg_params  # imports this module

        secagg_params(aggregation, num_sites=len(names), client_clip_norm=client_clip_norm(strategy))
