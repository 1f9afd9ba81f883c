"""Choose which parameters DP-SGD trains.

DP-SGD noise is added to every trainable coordinate while the clipped signal has norm
at most C, so the signal-to-noise ratio falls with the number of trained parameters.
Training only normalisation layers and the output head of a network (Frankle et al.
2020, "Training BatchNorm and only BatchNorm"; a standard parameter-efficient recipe in
DP fine-tuning) keeps ResNet-18 learnable at single-digit ε and is also far cheaper:
Opacus computes per-sample gradients only for trainable parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d, nn.modules.batchnorm._BatchNorm)
_HEADS = ("fc", "segmentation_head", "classifier")


def _head_prefix(model: nn.Module) -> str:
    names = dict(model.named_children())
    for head in _HEADS:
        if head in names:
            return head + "."
    # A plain nn.Sequential: its last module with parameters is the head.
    last = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
    if not last:
        raise ValueError(f"{type(model).__name__} has no head layer among {_HEADS} and no children with parameters")
    return last[-1] + "."


def select_trainable(model: nn.Module, spec: str | Sequence[str]) -> int:
    """Freeze every parameter not selected by ``spec``; return the number left trainable.

    Parameters
    ----------
    spec : str or sequence of str
        ``"all"``, or tokens: ``norm`` (every normalisation layer), ``head`` (the output
        layer: ``fc`` / ``segmentation_head``), or a parameter-name prefix such as
        ``decoder.`` or ``layer4.``.

    Raises
    ------
    ValueError
        If a token selects nothing (a typo must not silently freeze the whole model).
    """
    if isinstance(spec, str):
        spec = [spec]
    if list(spec) == ["all"]:
        for p in model.parameters():
            p.requires_grad_(True)
        return sum(p.numel() for p in model.parameters())
    selected: set[str] = set()
    for token in spec:
        if token == "norm":
            names = {
                f"{mod_name}.{p_name}" if mod_name else p_name
                for mod_name, module in model.named_modules()
                if isinstance(module, _NORMS)
                for p_name, _ in module.named_parameters(recurse=False)
            }
        else:
            prefix = _head_prefix(model) if token == "head" else token
            names = {name for name, _ in model.named_parameters() if name.startswith(prefix)}
        if not names:
            raise ValueError(f"training.trainable token {token!r} selects no parameter of {type(model).__name__}")
        selected |= names
    count = 0
    for name, p in model.named_parameters():
        p.requires_grad_(name in selected)
        count += p.numel() if name in selected else 0
    return count
