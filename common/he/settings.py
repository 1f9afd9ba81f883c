"""The encrypted-inference settings file shared by server and clinic (``conf/inference/he.yaml``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# conf/ beside common/ (common.run_config has the same path but imports Flower, which inference never needs).
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "inference" / "he.yaml"
SECTIONS = ("ckks", "server", "client")


def load_he_config(path: str | Path | None = None) -> DictConfig:
    """``conf/inference/he.yaml``, or the file given with ``--config``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it lacks one of the ``ckks``, ``server`` and ``client`` sections.
    """
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"inference config {path} does not exist")
    cfg = OmegaConf.load(path)
    missing = [s for s in SECTIONS if s not in cfg]
    if missing:
        raise ValueError(f"inference config {path} lacks section(s) {missing} (see {DEFAULT_CONFIG})")
    return cfg
