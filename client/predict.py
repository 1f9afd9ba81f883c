"""``privmed-predict``: a logged privmed model's prediction for image files, on this machine.

Files go through the same readers, intensity window, resizing and standardisation as in
training. Classification prints the probability of the positive class; segmentation writes a
mask (NIfTI with the input's geometry for a NIfTI volume, else a PNG whose pixel values are
class indices) and prints where, with the number of pixels per class.

Examples
--------
privmed-predict chest.jpeg --model runs:/<run id>/model
privmed-predict liver_3.nii.gz --model models:/privmed-liver/2 --out liver_3_mask.nii.gz

MLflow: ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from common.data.errors import DataError
from common.models.logged import LoggedModelError, load_trained_model
from common.prediction import choose_window, predict_file
from common.window_arg import parse_window_arg

# privmed's default tracking store (conf/config.yaml mlflow.tracking_uri).
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"



def run(args: argparse.Namespace) -> None:
    """Predict every file of ``args.images`` and print one line each (see the module docstring)."""
    if args.out is not None and len(args.images) > 1:
        raise ValueError("--out names one mask file: give one image with it")
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    trained = load_trained_model(args.model, tracking_uri=tracking_uri)
    window = choose_window(trained, parse_window_arg(args.window, "model"))
    positive = trained.class_names[-1]
    for path in args.images:
        result = predict_file(trained, Path(path), window=window, mask_path=args.out)
        if result.probability is not None:
            decision = trained.class_names[int(result.probability >= args.threshold)]
            print(f"{path}: probability={result.probability:.6f} ({positive}) decision={decision}", flush=True)
        else:
            counts = " ".join(f"{name}={n}" for name, n in result.class_counts.items())
            print(f"{path}: mask={result.mask_path} pixels: {counts}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; exits 2 with one line on stderr when something is wrong."""
    summary = __doc__.split("\n\n")[0].replace("``", "")
    parser = argparse.ArgumentParser(prog="privmed-predict", description=summary)
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="JPEG/PNG, single-image DICOM, or NIfTI (segmentation)")
    parser.add_argument("--model", required=True,
                        help="runs:/<run id>/model, models:/<name>/<version>, or a local MLflow Model folder")
    parser.add_argument("--tracking-uri",
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--window", nargs="+", metavar="V",
                        help="intensity window LOW HIGH for these files, or none (default: the training sites')")
    parser.add_argument("--out", type=Path, help="segmentation: the mask file (default <name>_mask.nii.gz / .png here)")
    parser.add_argument("--threshold", type=float, default=0.5, help="classification: decision threshold (default 0.5)")
    args = parser.parse_args(argv)
    # One line per file on stdout and one error line on stderr: no download progress bars.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        run(args)
    except (DataError, LoggedModelError, ValueError) as err:
        print(f"privmed-predict: {type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
