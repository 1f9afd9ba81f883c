"""The real Hydra configs: every option composes and instantiates; impossible configs are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from common.federation_config import ConfigError, expand_sites, site_names, site_view, validate_config
from common.models import build_model
from common.run_config import CONF_DIR

GROUPS = ["task", "model", "privacy", "strategy", "federation", "training", "experiment"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes_and_validates(tiny_config, group):
    assert _options(group), f"conf/{group} is empty"
    for option in _options(group):
        cfg = tiny_config(f"{group}={option}", small_sites=option != "many_sites")
        validate_config(cfg)
        build_model(cfg.model)
        instantiate(cfg.training.optimizer)


def test_default_job_is_three_hospitals_resnet18_sample_dp(tiny_config):
    cfg = tiny_config()
    assert site_names(cfg) == ["hospital_a", "hospital_b", "hospital_c"]
    assert cfg.model._target_.endswith("build_resnet") and cfg.model.depth == 18
    assert cfg.strategy.name == "fedavg" and cfg.strategy.client_dp is None
    assert cfg.task.name == "classification"


def test_segmentation_switches_to_unet(tiny_config):
    cfg = tiny_config("task=segmentation")
    assert cfg.model._target_.endswith("build_unet") and cfg.model.num_classes == 3
    assert "decoder." in cfg.model.trainable


def test_site_overrides_global_privacy_and_training(tiny_config):
    cfg = tiny_config(
        "+federation.sites.hospital_b.privacy.target_epsilon=3.0", "+federation.sites.hospital_b.training.local_epochs=2"
    )
    b, a = site_view(cfg, "hospital_b"), site_view(cfg, "hospital_a")
    assert b.privacy.target_epsilon == 3.0 and a.privacy.target_epsilon == cfg.privacy.target_epsilon
    assert b.training.local_epochs == 2 and a.training.local_epochs == 1
    assert b.state_dir.endswith("state/hospital_b")
    assert [site_view(cfg, s).index for s in site_names(cfg)] == [0, 1, 2]


def test_sites_differ_in_class_mix_and_scanner(tiny_config):
    cfg = tiny_config()
    views = [site_view(cfg, s).data for s in site_names(cfg)]
    assert len({v.positive_fraction for v in views}) == 3
    assert len({(v.intensity_shift, v.intensity_scale) for v in views}) == 3
    assert len({v.seed for v in views}) == 3


def test_many_sites_generates_two_hundred_distinct_sites(tiny_config):
    cfg = tiny_config("experiment=many_sites", small_sites=False)
    sites = expand_sites(cfg.federation)
    assert len(sites) == 200
    assert len({s.data.seed for s in sites.values()}) == 200
    assert cfg.strategy.client_dp is not None and cfg.strategy.name == "dp_fedavg"
    validate_config(cfg)


@pytest.mark.parametrize(
    "override,match",
    [
        ("federation.num_rounds=0", "num_rounds must be >= 1"),
        ("privacy.target_epsilon=-1", "target_epsilon must be > 0, got -1"),
        ("privacy.delta=0.5", "delta=0.5 must be below 1/num_train"),
        ("training.batch_size=1000", "batch_size must be in \\[1, num_train=64\\]"),
        ("privacy.noise_multiplier=0", "noise_multiplier must be > 0 or null"),
        ("privacy.max_grad_norm=0", "max_grad_norm must be > 0"),
    ],
)
def test_impossible_configs_are_refused_with_the_key(tiny_config, override, match):
    with pytest.raises(ConfigError, match=match):
        validate_config(tiny_config(override))


def test_client_dp_requires_every_site_every_round(tiny_config):
    with pytest.raises(ConfigError, match="fraction_train=1.0"):
        validate_config(tiny_config("strategy=dp_fedavg", "strategy.fraction_train=0.5"))
    with pytest.raises(ConfigError, match="client_dp.delta"):
        validate_config(tiny_config("strategy=dp_fedavg", "strategy.client_dp.delta=0.5"))


def test_adaptive_clipping_noise_split_is_checked_up_front(tiny_config):
    with pytest.raises(ConfigError, match="clipped_count_stddev > 1.5 \\(got 0.15"):
        validate_config(
            tiny_config(
                "strategy=dp_fedavg_adaptive",
                "strategy.client_dp.noise_multiplier=3.0",
                "strategy.client_dp.clipped_count_stddev=0.15",
            )
        )


def test_unknown_site_is_named(tiny_config):
    with pytest.raises(ConfigError, match="unknown site 'hospital_z'.*hospital_a"):
        site_view(tiny_config(), "hospital_z")
