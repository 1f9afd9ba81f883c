"""What a site hands to SecAgg+ masking: its update, clipped by the site itself (pure torch).

Under SecAgg+ the coordinator only sees the sum, so it cannot clip one site's update: for
client-level DP each site clips its own update to the norm C the coordinator announced,
and the coordinator adds noise calibrated to C to the unmasked sum.

1. Δ = local weights − global weights (only the exchanged part).
2. Refuse NaN/inf: after masking, nobody could tell which site broke the sum.
3. Clip Δ to L2 norm C over all exchanged tensors together (client-level DP).
4. Refuse a Δ with a coordinate outside the quantization range rather than saturate it.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch


class UpdateRejected(ValueError):
    """The site's update cannot be aggregated securely; the message says why."""


def update_norm(update: dict[str, torch.Tensor]) -> float:
    """L2 norm of all tensors of ``update`` flattened into one vector."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in update.values()))


def secure_update(
    local: dict[str, torch.Tensor],
    global_: dict[str, torch.Tensor],
    *,
    clip_norm: float | None,
    clipping_range: float,
    site: str,
) -> tuple[OrderedDict[str, torch.Tensor], float]:
    """Return the (clipped) update to mask and its norm before clipping.

    Parameters
    ----------
    local, global_ : dict of str to Tensor
        The site's trained exchanged weights and the global ones it started from (same keys).
    clip_norm : float or None
        Client-level clipping norm C; None leaves Δ unclipped (no client-level DP).
    clipping_range : float
        SecAgg+ quantizes each coordinate within ``[-clipping_range, clipping_range]``.
    site : str
        Named in errors.

    Raises
    ------
    UpdateRejected
        If Δ is not finite, or (unclipped) has a coordinate outside the quantization range.
    """
    if local.keys() != global_.keys():
        raise UpdateRejected(f"site {site}: trained weights and global weights have different keys")
    # 1. The update, in float64 so that clipping does not add rounding of its own.
    delta = OrderedDict((k, local[k].detach().double() - global_[k].detach().double()) for k in global_)
    # 2. Non-finite updates never enter a masked sum.
    for key, value in delta.items():
        if not torch.isfinite(value).all():
            raise UpdateRejected(f"site {site}: update of {key} has NaN/inf; not sent for secure aggregation")
    norm = update_norm(delta)
    # 3. Client-level clipping: the coordinator cannot do it on masked updates.
    if clip_norm is not None:
        scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
        delta = OrderedDict((k, v * scale) for k, v in delta.items())
    # 4. Saturation would silently change the sum: refuse instead.
    largest = max((float(v.abs().max()) for v in delta.values() if v.numel()), default=0.0)
    if largest > clipping_range:
        raise UpdateRejected(
            f"site {site}: an update coordinate of magnitude {largest:.4g} exceeds "
            f"aggregation.clipping_range={clipping_range:g}; SecAgg+ would saturate it. Raise "
            "aggregation.clipping_range or use strategy=dp_fedavg (clipped updates)"
        )
    return OrderedDict((k, v.float()) for k, v in delta.items()), norm
