"""Sparse model updates: which coordinates a site shares, how they travel, how they are averaged.

A site's update is Δ = (weights after its local training) − (global weights it received),
flattened over the exchanged tensors in sorted-key order (every node derives the same layout
from the same model config). Only ``c = ceil(fraction · d)`` coordinates travel, as a message
of two arrays: the values, and where they sit, as ``indices`` (uint32 positions) or as a packed
bit ``mask`` (d/8 bytes), whichever is smaller for ``c``; the choice depends only on ``fraction``
and ``d`` (config), so every site of a federation sends the same keys.

Averaging rule (server): a coordinate a site did not share counts as a zero update for that
site, so ``global_i += Σ_k w_k Δ_k,i / Σ_k w_k`` over *all* aggregated sites ``k`` (weights
``w_k`` as in FedAvg), as in Li et al. (2019).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from common.federation_config import ConfigError

SPARSE_STRATEGIES = ("partial_sharing", "svt")
VALUES, INDICES, MASK = "values", "indices", "mask"


class MalformedUpdate(ValueError):
    """A sparse message that cannot be decoded; ``position`` is its index among the round's updates."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(reason)
        self.position = position


def is_sparse(strategy_cfg: Mapping) -> bool:
    """True for strategies whose sites send sparse updates."""
    return str(strategy_cfg.get("name")) in SPARSE_STRATEGIES


def num_shared(fraction: float, size: int) -> int:
    """c = ⌈fraction · d⌉ coordinates a site may share (at least one)."""
    return min(size, max(1, math.ceil(fraction * size)))


def uses_mask(fraction: float, size: int) -> bool:
    """True when a packed bit mask (d/8 bytes) is smaller than c uint32 indices."""
    return math.ceil(size / 8) < 4 * num_shared(fraction, size)


def flat_delta(new: Mapping[str, np.ndarray], old: Mapping[str, np.ndarray]) -> np.ndarray:
    """Δ = new − old flattened in sorted-key order (float64).

    Raises
    ------
    ValueError
        If the two states do not have the same keys and shapes, or a tensor is not floating point.
    """
    if set(new) != set(old):
        raise ValueError(f"update keys differ from the global model's: {sorted(set(new) ^ set(old))[:3]}")
    parts = []
    for key in sorted(new):
        a, b = np.asarray(new[key]), np.asarray(old[key])
        if a.shape != b.shape:
            raise ValueError(f"{key}: update shape {a.shape} differs from the global model's {b.shape}")
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{key}: sparse sharing needs floating-point tensors, got {a.dtype}")
        parts.append((a.astype(np.float64) - b.astype(np.float64)).ravel())
    return np.concatenate(parts) if parts else np.zeros(0)


def apply_flat(state: Mapping[str, np.ndarray], delta: np.ndarray) -> dict[str, np.ndarray]:
    """``state + delta`` with ``delta`` in :func:`flat_delta`'s layout; dtypes and shapes kept."""
    out, start = {}, 0
    for key in sorted(state):
        a = np.asarray(state[key])
        out[key] = (a + delta[start : start + a.size].reshape(a.shape)).astype(a.dtype)
        start += a.size
    if start != delta.size:
        raise ValueError(f"update has {delta.size} coordinates, the model {start}")
    return {key: out[key] for key in state}  # the caller's key order


def top_fraction(delta: np.ndarray, fraction: float) -> np.ndarray:
    """Indices (ascending) of the ⌈fraction · d⌉ coordinates of largest magnitude."""
    c = num_shared(fraction, delta.size)
    return np.sort(np.argpartition(-np.abs(delta), c - 1)[:c])


def encode(indices: np.ndarray, values: np.ndarray, *, size: int, fraction: float) -> dict[str, np.ndarray]:
    """The arrays a site sends: float32 values (ascending index order) and their positions."""
    order = np.argsort(indices)
    indices, values = np.asarray(indices)[order], np.asarray(values, dtype=np.float32)[order]
    if uses_mask(fraction, size):
        mask = np.zeros(size, dtype=bool)
        mask[indices] = True
        return {MASK: np.packbits(mask), VALUES: values}
    return {INDICES: indices.astype(np.uint32), VALUES: values}


def decode(arrays: Mapping[str, np.ndarray], *, size: int, limit: int) -> np.ndarray:
    """The dense update (zeros where nothing was shared) of one site's sparse message.

    Raises
    ------
    ValueError
        If the message is malformed: unknown keys, positions outside the model, repeated
        positions, more than ``limit`` values, or non-finite values.
    """
    keys = set(arrays)
    values = np.asarray(arrays.get(VALUES, np.zeros(0)), dtype=np.float64)
    if keys == {MASK, VALUES}:
        mask = np.unpackbits(np.asarray(arrays[MASK], dtype=np.uint8), count=size).astype(bool)
        if np.asarray(arrays[MASK]).size != math.ceil(size / 8):
            raise ValueError(f"mask has {np.asarray(arrays[MASK]).size} bytes, expected {math.ceil(size / 8)}")
        indices = np.flatnonzero(mask)
    elif keys == {INDICES, VALUES}:
        indices = np.asarray(arrays[INDICES]).astype(np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= size):
            raise ValueError(f"positions outside the model's {size} coordinates")
        if np.unique(indices).size != indices.size:
            raise ValueError("repeated positions")
    else:
        raise ValueError(f"expected arrays {{{VALUES}, {INDICES}|{MASK}}}, got {sorted(keys)}")
    if indices.size != values.size:
        raise ValueError(f"{indices.size} positions but {values.size} values")
    if values.size > limit:
        raise ValueError(f"{values.size} values shared, more than the allowed {limit}")
    if not np.isfinite(values).all():
        raise ValueError("non-finite values")
    dense = np.zeros(size)
    dense[indices] = values
    return dense


def average_sparse(
    start: Mapping[str, np.ndarray], updates: list[tuple[Mapping[str, np.ndarray], float]], *, fraction: float
) -> dict[str, np.ndarray]:
    """``start + Σ_k w_k Δ_k / Σ_k w_k`` over sparse messages ``(arrays_k, w_k)``; unshared = 0.

    Raises
    ------
    MalformedUpdate
        If a message does not decode (:func:`decode`), naming its position in ``updates``.
    """
    size = int(sum(np.asarray(a).size for a in start.values()))
    total, weights = np.zeros(size), 0.0
    for k, (arrays, weight) in enumerate(updates):
        try:
            total += float(weight) * decode(arrays, size=size, limit=num_shared(fraction, size))
        except ValueError as err:
            raise MalformedUpdate(k, str(err)) from err
        weights += float(weight)
    if not updates or weights <= 0:
        raise ValueError("no update with positive weight to average")
    return apply_flat(start, total / weights)


def check_sharing_config(strategy_cfg: Mapping, aggregation: str | None) -> None:
    """Raise :class:`ConfigError` for sparse-sharing settings that cannot run or would mislead."""
    name = str(strategy_cfg.get("name"))
    if name not in SPARSE_STRATEGIES:
        return
    if aggregation == "secaggplus":
        raise ConfigError(
            f"strategy={name} cannot run with aggregation=secaggplus: a sparse update reveals which "
            "coordinates the site chose (its largest-magnitude or SVT-selected coordinates), and masking "
            "a dense vector with zeros elsewhere would hide them but send the whole model, defeating the "
            "point; use aggregation=plain (the coordinator sees each site's sparse update)"
        )
    if strategy_cfg.get("client_dp") is not None:
        raise ConfigError(f"strategy={name} has no client-level DP (strategy.client_dp must be null)")
    fraction = float(strategy_cfg.fraction)
    if not 0 < fraction <= 1:
        raise ConfigError(f"strategy.fraction must be in (0, 1], got {fraction}")
    if name == "svt":
        svt = strategy_cfg.svt
        for key in ("epsilon", "gamma", "max_epsilon"):
            if float(svt[key]) <= 0:
                raise ConfigError(f"strategy.svt.{key} must be > 0, got {svt[key]}")
        if not 0 < float(svt.value_share) < 1:
            raise ConfigError(f"strategy.svt.value_share must be in (0, 1), got {svt.value_share}")
        if not 0 <= float(svt.tau) <= float(svt.gamma):
            raise ConfigError(f"strategy.svt.tau must be in [0, gamma={svt.gamma}], got {svt.tau}")
        if int(svt.max_passes) < 1:
            raise ConfigError(f"strategy.svt.max_passes must be >= 1, got {svt.max_passes}")
