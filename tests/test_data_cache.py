"""The site's data cache (common/data/data_cache.py): a hit returns identical tensors; a changed file,
a changed reader setting or a damaged entry reads the files again."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import OmegaConf

from common.data.site_data import SiteData, build_site_data
from common.federation_config import site_view

CACHED = "(from the site's data cache)"


def _same(a: SiteData, b: SiteData) -> None:
    assert a.train.ids == b.train.ids
    for p, q in zip(a.train.patients, b.train.patients, strict=True):
        assert p.images.dtype == q.images.dtype and torch.equal(p.images, q.images)
        assert p.targets.dtype == q.targets.dtype and torch.equal(p.targets, q.targets)
    for x, y in zip(a.test.tensors, b.test.tensors, strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y)
    assert b.skipped == a.skipped


def _entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.npz"))


def test_cache_hit_returns_identical_tensors_and_changes_invalidate_it(tiny_config, tmp_path):
    cfg = tiny_config()
    task, data = cfg.task, site_view(cfg, "hospital_a").data
    cache = tmp_path / "state" / "hospital_a" / "data_cache"  # in the site's state dir, beside its ledger

    read = build_site_data(task, data, cache_dir=cache)  # writes the JPEGs, reads them, fills the cache
    assert CACHED not in read.summary and len(_entries(cache)) == 1
    hit = build_site_data(task, data, cache_dir=cache)
    assert hit.summary == f"{read.summary} {CACHED}"
    _same(read, hit)
    _same(read, build_site_data(task, data))  # and identical to reading without any cache

    # A changed file (same name, new content and time): read again, the stale entry replaced.
    first = _entries(cache)
    jpeg = sorted(Path(data.root).glob("train/*/*.jpeg"))[0]
    os.utime(jpeg, ns=(jpeg.stat().st_atime_ns, jpeg.stat().st_mtime_ns + 1_000_000_000))
    again = build_site_data(task, data, cache_dir=cache)
    assert CACHED not in again.summary and len(_entries(cache)) == 1 and _entries(cache) != first
    assert CACHED in build_site_data(task, data, cache_dir=cache).summary

    # A removed file: read again, and the site now has one image fewer.
    jpeg.unlink()
    fewer = build_site_data(task, data, cache_dir=cache)
    assert CACHED not in fewer.summary and fewer.train.num_images == read.train.num_images - 1

    # A changed reader setting (window, image size): read again, with that setting.
    windowed = build_site_data(task, OmegaConf.merge(data, {"window": [0.0, 200.0]}), cache_dir=cache)
    assert CACHED not in windowed.summary
    smaller = build_site_data(OmegaConf.merge(task, {"image_size": 16}), data, cache_dir=cache)
    assert CACHED not in smaller.summary and smaller.test.tensors[0].shape[-1] == 16

    # A damaged entry is a miss, never an error, and is rewritten.
    (entry,) = _entries(cache)
    entry.write_bytes(b"not a zip file")
    rebuilt = build_site_data(OmegaConf.merge(task, {"image_size": 16}), data, cache_dir=cache)
    assert CACHED not in rebuilt.summary
    _same(smaller, rebuilt)
    assert CACHED in build_site_data(OmegaConf.merge(task, {"image_size": 16}), data, cache_dir=cache).summary


def test_missing_root_fails_in_the_reader_even_with_a_cache(tiny_config, tmp_path):
    cfg = tiny_config()
    data = OmegaConf.merge(site_view(cfg, "hospital_a").data, {"synthesize": False, "root": str(tmp_path / "gone")})
    try:
        build_site_data(cfg.task, data, cache_dir=tmp_path / "cache")
    except Exception as err:  # noqa: BLE001 - the reader's own error, whatever its type
        assert "gone" in str(err)
    else:
        raise AssertionError("a missing data root must fail")
    assert not _entries(tmp_path / "cache")
