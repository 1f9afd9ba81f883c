"""``privmed-infer``: a clinic's encrypted prediction for its own image files.

The image never leaves the clinic in the clear and the secret key never leaves it at all:
the server sees the public evaluation keys and ciphertexts only.

Examples
--------
privmed-infer chest.jpeg --server http://127.0.0.1:8765
privmed-infer a.jpeg b.jpeg --server http://127.0.0.1:8765 --plaintext-model runs:/<run id>/model

Output: one line per image with the probability, the decision and the latency and bytes;
with ``--plaintext-model`` also the plaintext probability, and a last line
``abs_diff=<largest |encrypted - plaintext| probability difference>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from client.encrypted_inference import EncryptedInferenceSession, sigmoid
from client.infer_client import InferenceClient, InferenceServerError
from common.data.errors import DataError
from common.he.keys import CiphertextError, IntegrityError
from common.he.model_source import ModelSourceError, load_model
from common.he.params import CKKSParams, HEParameterError
from common.he.settings import DEFAULT_CONFIG, load_he_config
from common.window_arg import parse_window_arg



def _progress(message: str) -> None:
    print(f"privmed-infer: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> None:
    """Predict every image of ``args.images``; print the results (see the module docstring)."""
    he_cfg = load_he_config(args.config)
    plaintext = load_model(args.plaintext_model) if args.plaintext_model else None
    client = InferenceClient(args.server, timeout_s=float(he_cfg.client.timeout_s))
    session = EncryptedInferenceSession(
        client,
        CKKSParams.from_config(he_cfg.ckks),
        integrity_tolerance=float(he_cfg.ckks.integrity_tolerance),
        window=parse_window_arg(args.window, "server"),
        progress=_progress,
    )
    if plaintext is not None and plaintext.image_size != int(session.info["image_size"]):
        raise ValueError(
            f"--plaintext-model takes {plaintext.image_size} px images, the server's model "
            f"{session.info['image_size']} px: not the same model"
        )
    print(f"keys: generate_s={session.keygen_s:.2f} upload_s={session.upload_s:.2f} upload_bytes={session.key_bytes}")
    classes = session.info.get("class_names") or ["negative", "positive"]
    threshold = float(he_cfg.client.decision_threshold)
    worst = 0.0
    for path in args.images:
        image = session.read_image(path)
        result = session.predict(image)
        decision = classes[int(result.probability >= threshold)]
        print(
            f"{path}: probability={result.probability:.6f} decision={decision} encrypt_s={result.encrypt_s:.3f} "
            f"server_s={result.evaluate_s:.3f} round_trip_s={result.round_trip_s:.3f} "
            f"decrypt_s={result.decrypt_s:.3f} sent_bytes={result.sent_bytes} received_bytes={result.received_bytes}",
            flush=True,
        )
        if plaintext is not None:
            with torch.no_grad():
                reference = sigmoid(float(plaintext.module(image).reshape(-1)[0]))
            diff = abs(result.probability - reference)
            worst = max(worst, diff)
            print(f"{path}: plaintext_probability={reference:.6f} abs_diff={diff:.3e}", flush=True)
    if plaintext is not None:
        print(f"abs_diff={worst:.3e}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; exits 2 with one line on stderr when something is wrong."""
    summary = __doc__.split("\n\n")[0].replace("``", "")
    parser = argparse.ArgumentParser(prog="privmed-infer", description=summary)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG/PNG or single-image DICOM files")
    parser.add_argument("--server", required=True, help="the model owner's URL, e.g. http://127.0.0.1:8765")
    parser.add_argument("--plaintext-model", help="the same model in the clear (runs:/..., models:/..., state dict), "
                        "to compare: prints abs_diff=")
    parser.add_argument("--window", nargs="+", metavar="V",
                        help="intensity window LOW HIGH for these files, or none (default: the training sites')")
    parser.add_argument("--config", help=f"inference config (default {DEFAULT_CONFIG})")
    args = parser.parse_args(argv)
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        print(f"privmed-infer: no such image file: {missing[0]}", file=sys.stderr)
        sys.exit(2)
    try:
        run(args)
    except (InferenceServerError, IntegrityError, CiphertextError, HEParameterError, DataError, ModelSourceError,
            FileNotFoundError, ValueError) as err:
        print(f"privmed-infer: {type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
