"""Encrypted inference: latency per image, bytes each way, agreement with the plaintext model.

Serves a trained ``he_cnn`` with the real HTTP server on 127.0.0.1 (a thread), runs the clinic's
session against it for every JPEG of a site's test folder and, in the same run, the plaintext
model on the same prepared images (the baseline). Reports client encryption, server evaluation,
round trip and client decryption seconds per image, the one-off key generation and upload,
bytes each way, max |Δ logit| and |Δ probability|, identical decisions, and AUC both ways.

    python bench/he_inference.py --model runs:/<run id>/model [--site hospital_a] [--limit 50] [--json]

The site's files are found through the run's resolved config (``data.root``) unless ``--data``
names a Kermany-layout folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table
from sklearn.metrics import roc_auc_score

from client.encrypted_inference import EncryptedInferenceSession, sigmoid
from client.infer_client import InferenceClient
from common.he.model_source import load_model
from common.he.params import CKKSParams
from common.he.settings import load_he_config
from server.infer_server import build_server

# PriMIA (Kaissis et al., Nature Machine Intelligence 2021), encrypted inference with SMPC: ~100 s per image.
PRIMIA_SECONDS_PER_IMAGE = 100.0


def site_test_files(model: str, site: str, data: str | None) -> list[tuple[Path, int]]:
    """``(file, label)`` for every test image of ``site`` (label = index of its class folder)."""
    if data is None:
        if not model.startswith("runs:/"):
            raise SystemExit("--data is needed when --model is not a runs:/ URI")
        run_id = model[len("runs:/"):].split("/", 1)[0]
        cfg = OmegaConf.load(mlflow.artifacts.download_artifacts(run_id=run_id,
                                                                 artifact_path="config/resolved_config.yaml"))
        view = cfg.federation.sites[site]
        root, classes = Path(view.data.root), list(cfg.task.data.classes)
    else:
        root, classes = Path(data), ["NORMAL", "PNEUMONIA"]
    files = [(p, label) for label, name in enumerate(classes) for p in sorted((root / "test" / name).glob("*.jp*g"))]
    if not files:
        raise SystemExit(f"no test JPEGs under {root}/test/{{{','.join(classes)}}}")
    return files


def run(args: argparse.Namespace) -> dict:
    """Serve, predict every file encrypted and in the clear, and summarise."""
    he_cfg = load_he_config(args.config)
    files = site_test_files(args.model, args.site, args.data)
    rng = np.random.default_rng(0)
    if args.limit and len(files) > args.limit:  # a class-balanced-in-expectation sample
        files = [files[i] for i in sorted(rng.choice(len(files), args.limit, replace=False))]
    server = build_server(args.model, he_cfg, host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        model = load_model(args.model).module  # the baseline: the same model in the clear, here
        session = EncryptedInferenceSession(
            InferenceClient(server.url, timeout_s=he_cfg.client.timeout_s),
            CKKSParams.from_config(he_cfg.ckks),
            integrity_tolerance=he_cfg.ckks.integrity_tolerance,
        )
        rows = []
        for i, (path, label) in enumerate(files, start=1):
            image = session.read_image(path)
            start = time.perf_counter()
            with torch.no_grad():
                clear = float(model(image).item())
            clear_s = time.perf_counter() - start
            result = session.predict(image)
            rows.append(dict(label=label, clear=clear, clear_s=clear_s, logit=result.logit,
                             encrypt_s=result.encrypt_s, evaluate_s=result.evaluate_s,
                             round_trip_s=result.round_trip_s, decrypt_s=result.decrypt_s,
                             sent=result.sent_bytes, received=result.received_bytes))
            print(f"\r{i}/{len(files)} images", end="", flush=True)
        print()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)
    return summarise(rows, session, threshold=float(he_cfg.client.decision_threshold))


def summarise(rows: list[dict], session: EncryptedInferenceSession, *, threshold: float) -> dict:
    """Medians per image, the one-off key costs, and agreement with the plaintext model."""
    med = {k: statistics.median(r[k] for r in rows) for k in ("clear_s", "encrypt_s", "evaluate_s", "round_trip_s",
                                                              "decrypt_s", "sent", "received")}
    enc_p = [sigmoid(r["logit"]) for r in rows]
    clear_p = [sigmoid(r["clear"]) for r in rows]
    labels = [r["label"] for r in rows]
    both = len(set(labels)) == 2
    latency = med["encrypt_s"] + med["round_trip_s"] + med["decrypt_s"]
    return {
        "images": len(rows),
        "params": session.keys.params.describe(),
        "keygen_s": session.keygen_s,
        "key_upload_s": session.upload_s,
        "key_bytes": session.key_bytes,
        "median_encrypt_s": med["encrypt_s"],
        "median_server_evaluate_s": med["evaluate_s"],
        "median_round_trip_s": med["round_trip_s"],
        "median_decrypt_s": med["decrypt_s"],
        "median_latency_s": latency,
        "median_plaintext_s": med["clear_s"],
        "latency_ratio_vs_plaintext": latency / med["clear_s"],
        "primia_s_per_image": PRIMIA_SECONDS_PER_IMAGE,
        "median_bytes_sent": med["sent"],
        "median_bytes_received": med["received"],
        "max_abs_logit_diff": max(abs(r["logit"] - r["clear"]) for r in rows),
        "max_abs_probability_diff": max(abs(a - b) for a, b in zip(enc_p, clear_p)),
        "identical_decisions": sum((a >= threshold) == (b >= threshold) for a, b in zip(enc_p, clear_p)),
        "auc_encrypted": roc_auc_score(labels, enc_p) if both else float("nan"),
        "auc_plaintext": roc_auc_score(labels, clear_p) if both else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="runs:/<id>/model, models:/..., or a state dict")
    parser.add_argument("--site", default="hospital_a", help="whose test folder (from the run's config)")
    parser.add_argument("--data", help="a Kermany-layout folder instead of the site's")
    parser.add_argument("--limit", type=int, default=0, help="at most this many images (0: all)")
    parser.add_argument("--config", help="inference config (default conf/inference/he.yaml)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    summary = run(args)
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=f"encrypted inference, {summary['images']} images ({summary['params']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if key not in ("params", "images"):
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)


if __name__ == "__main__":
    main()
