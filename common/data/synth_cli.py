"""``privmed-synth``: write every configured site's synthetic data in its real file layout.

Examples
--------
privmed-synth                                        # Kermany JPEGs for the three hospitals
privmed-synth task=segmentation                      # MSD NIfTI cases instead
privmed-synth data_root=/data/synth --site hospital_a
privmed-synth task=segmentation ++federation.sites.hospital_b.data.format=brats \\
    ++federation.sites.hospital_b.data.label_map="{0: 0, 2: 1, 1: 2, 4: 2}"

Sites read these files with the same readers as real data; ``privmed-simulate`` writes
them on first use by itself, so this command is for looking at, copying or deploying them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from common.data.errors import DataError
from common.data.synthesize import ensure_synthetic
from common.federation_config import site_views
from common.run_config import compose_config


def main(argv: list[str] | None = None) -> int:
    """Compose the config with Hydra overrides and write each site's synthetic files."""
    parser = argparse.ArgumentParser(prog="privmed-synth", description=__doc__.split("\n")[0])
    parser.add_argument("--site", action="append", help="only this site (repeatable); default: every site")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. task=segmentation data_root=DIR")
    args = parser.parse_intermixed_args(argv)
    cfg = compose_config(args.overrides)
    views = site_views(cfg)
    unknown = sorted(set(args.site or []) - set(views))
    if unknown:
        parser.error(f"unknown site(s) {unknown}; this federation has: {', '.join(views)}")
    for name in args.site or list(views):
        data = views[name].data
        if data.format == "synthetic":
            print(f"{name}: format synthetic is generated in memory; nothing to write")
            continue
        root = os.path.normpath(data.root)
        try:
            wrote = ensure_synthetic(Path(root), task=cfg.task, data=data)
        except DataError as err:
            print(f"privmed-synth: {name}: {err}", file=sys.stderr)
            return 2
        print(f"{name}: {'wrote' if wrote else 'already there:'} {data.format} data at {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
