"""A SuperNode's config: the coordinator's run config plus what the hospital owns (real compose)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from common.federation_config import ConfigError, site_view
from common.run_config import apply_site_config, compose_config, config_from_run_config


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _context(node_config: dict, overrides: str = "federation.num_rounds=2") -> Context:
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={"overrides": overrides})


@pytest.fixture
def strict_a(tmp_path) -> Path:
    return _write(
        tmp_path / "site_a.yaml",
        "name: hospital_a\ndata:\n  num_train: 500\nprivacy:\n  target_epsilon: 2.0\n  noise_multiplier: 1.3\n",
    )


def test_hospital_file_wins_for_its_own_site_only(strict_a):
    # The coordinator asks for ε = 9 everywhere; hospital_a's own file says 2.
    cfg = compose_config(["privacy.target_epsilon=9", "+federation.sites.hospital_a.privacy.target_epsilon=7"])
    merged = apply_site_config(cfg, "hospital_a", site_file=strict_a)
    a, b = site_view(merged, "hospital_a"), site_view(merged, "hospital_b")
    assert (a.privacy.target_epsilon, a.privacy.noise_multiplier, a.data.num_train) == (2.0, 1.3, 500)
    assert a.data.seed == cfg.federation.sites.hospital_a.data.seed  # keys the file leaves out stay
    assert (b.privacy.target_epsilon, b.data.num_train) == (9.0, cfg.federation.sites.hospital_b.data.num_train)


def test_data_root_sets_the_sites_data_root(strict_a):
    merged = apply_site_config(compose_config(), "hospital_a", site_file=strict_a, data_root="/data/xray")
    assert site_view(merged, "hospital_a").data.root == "/data/xray"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("name: hospital_b\n", r"name='hospital_b' but this SuperNode is site 'hospital_a'"),
        ("data: {num_train: 10}\n", r"name=None but this SuperNode is site 'hospital_a'"),
        ("name: hospital_a\nprivacy: {target_epsilon: 2}\nfederation: {}\n", r"unknown keys \['federation'\]"),
        ("name: [hospital_a\n", "not valid YAML"),
        ("- hospital_a\n", "must be a mapping"),
        # Validation runs on the merged config, and the error names the hospital's file.
        ("name: hospital_a\ndata: {num_train: 50000}\nprivacy: {delta: 0.001}\n", r"privacy.delta=0.001 must be below"),
    ],
)
def test_bad_site_files_are_refused_naming_the_file(tmp_path, text, match):
    path = _write(tmp_path / "mine.yaml", text)
    with pytest.raises(ConfigError, match=match) as err:
        apply_site_config(compose_config(), "hospital_a", site_file=path)
    assert str(path) in str(err.value)


def test_missing_or_relative_paths_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=rf"site config {tmp_path}/nope.yaml .*: no such file"):
        apply_site_config(compose_config(), "hospital_a", site_file=tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="use an absolute path"):
        apply_site_config(compose_config(), "hospital_a", site_file="site.yaml")
    with pytest.raises(ConfigError, match="data-root 'data' .*absolute path"):
        apply_site_config(compose_config(), "hospital_a", data_root="data")


def test_unknown_site_is_named():
    with pytest.raises(ConfigError, match="site 'hospital_z' .* sites: hospital_a, hospital_b, hospital_c"):
        apply_site_config(compose_config(), "hospital_z", data_root="/data")


def test_each_node_gets_its_own_config_and_simulated_nodes_share_one(strict_a, tmp_path):
    plain_0 = config_from_run_config(_context({"partition-id": 0, "num-partitions": 3}))
    plain_1 = config_from_run_config(_context({"partition-id": 1, "num-partitions": 3}))
    assert plain_0 is plain_1  # one composition serves every simulated node
    node_a = config_from_run_config(_context({"site": "hospital_a", "site-config": str(strict_a), "state-root": str(tmp_path)}))
    node_b = config_from_run_config(_context({"site": "hospital_b", "data-root": "/data/b"}))
    assert node_a.federation.sites.hospital_a.privacy.target_epsilon == 2.0
    assert node_a.state_root == str(tmp_path) and node_a.federation.num_rounds == 2
    assert node_b.federation.sites.hospital_b.data.root == "/data/b"
    assert "target_epsilon" not in node_b.federation.sites.hospital_a.privacy
    # An edited site file is read again (the file's mtime is part of the cache key).
    strict_a.write_text(strict_a.read_text().replace("2.0", "1.5"))
    os.utime(strict_a, ns=(0, strict_a.stat().st_mtime_ns + 10**9))
    again = config_from_run_config(_context({"site": "hospital_a", "site-config": str(strict_a), "state-root": str(tmp_path)}))
    assert again.federation.sites.hospital_a.privacy.target_epsilon == 1.5


def test_site_config_needs_the_site_name(strict_a):
    with pytest.raises(ConfigError, match="'site-config' or 'data-root' but not 'site'"):
        config_from_run_config(_context({"site-config": str(strict_a)}))


def test_only_the_hospitals_own_site_file_can_allow_non_private_training(tmp_path):
    """The coordinator submits privacy=none and 'consent' for every site; a SuperNode ignores the latter."""
    overrides = (
        "privacy=none federation.sites.hospital_a.allow_non_private=true "
        "federation.sites.hospital_b.allow_non_private=true"
    )
    node = {"site": "hospital_a", "state-root": str(tmp_path / "state")}
    cfg = config_from_run_config(_context(node, overrides))
    assert not site_view(cfg, "hospital_a").allow_non_private and not site_view(cfg, "hospital_b").allow_non_private
    own = _write(tmp_path / "site_a.yaml", "name: hospital_a\nallow_non_private: true\n")
    cfg = config_from_run_config(_context({**node, "site-config": str(own)}, overrides))
    assert site_view(cfg, "hospital_a").allow_non_private
    assert not site_view(cfg, "hospital_b").allow_non_private  # hospital_a's file speaks for hospital_a only
