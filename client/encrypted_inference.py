"""A clinic's session of encrypted predictions with one ``privmed-infer-server``.

The image is read and prepared exactly as in training, encrypted with keys generated here,
evaluated by the server without ever being decrypted there, and the returned logit is
decrypted and checked here. Keys are generated and uploaded once per session, then reused
for every image (the upload is tens of MB; one encrypted image is under 1 MB).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from client.infer_client import InferenceClient, InferenceServerError
from common.data.readers import read_image_file
from common.he.keys import ClinicKeys
from common.he.params import CKKSParams


def sigmoid(logit: float) -> float:
    """The positive class's probability (the models output one logit)."""
    return float(torch.sigmoid(torch.tensor(logit, dtype=torch.float64)))


@dataclass(frozen=True)
class EncryptedPrediction:
    """One image's encrypted prediction, with its latency and traffic."""

    logit: float
    encrypt_s: float
    evaluate_s: float
    round_trip_s: float
    decrypt_s: float
    sent_bytes: int
    received_bytes: int

    @property
    def probability(self) -> float:
        return sigmoid(self.logit)


class EncryptedInferenceSession:
    """Keys, server and preprocessing for a series of encrypted predictions.

    1. Ask the server for the model's public geometry and preprocessing; check the clinic's
       CKKS parameters have the levels and slots it needs.
    2. Generate the clinic's keys and upload the public context (evaluation keys only).
    3. Per image: read and prepare it as in training, encrypt, send, decrypt and check the logit.

    Parameters
    ----------
    client : InferenceClient
        The server connection.
    params : CKKSParams
        The clinic's CKKS parameters (checked for 128-bit security).
    integrity_tolerance : float
        See :class:`common.he.keys.ClinicKeys`.
    window : sequence of float or None or "server"
        Intensity window for the clinic's files; ``"server"`` takes the training sites' window.
    progress : callable
        Receives one-line progress messages (key generation and upload take seconds).
    """

    def __init__(
        self,
        client: InferenceClient,
        params: CKKSParams,
        *,
        integrity_tolerance: float,
        window: Sequence[float] | None | str = "server",
        progress: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        self.client, self.progress = client, progress
        # 1. The model's geometry, and the clinic's parameters against it.
        self.info = client.model_info()
        params.check_fits(depth=int(self.info["depth"]), slots=int(self.info["slots"]))
        self.window = self._choose_window(window)
        # 2. Keys, generated here; only the public context is uploaded.
        progress(f"generating CKKS keys ({params.describe()})")
        start = time.perf_counter()
        self.keys = ClinicKeys(params, integrity_tolerance=integrity_tolerance)
        public = self.keys.public_context()
        self.keygen_s = time.perf_counter() - start
        self.key_bytes = len(public)
        self._upload()

    def _choose_window(self, window: Sequence[float] | None | str) -> list[float] | None:
        if window != "server":
            return None if window is None else [float(v) for v in window]
        windows = self.info.get("windows") or []
        if len(windows) > 1:
            raise ValueError(
                f"the model's sites prepared images with different intensity windows {windows}; pass "
                "--window LOW HIGH for your scanner (or --window none)"
            )
        return windows[0] if windows else None

    def _upload(self) -> None:
        self.progress(f"uploading evaluation keys ({self.key_bytes / 1e6:.1f} MB, no secret key)")
        start = time.perf_counter()
        returned = self.client.upload_keys(self.keys.public_context())
        if returned != self.keys.key_id:
            raise InferenceServerError(f"the server registered key set {returned!r}, expected {self.keys.key_id!r}",
                                       kind="mismatch")
        self.upload_s = time.perf_counter() - start

    def read_image(self, path: str | Path) -> torch.Tensor:
        """The file prepared as in training: ``[1, 1, S, S]``."""
        return read_image_file(Path(path), image_size=int(self.info["image_size"]), window=self.window)

    def predict(self, image: torch.Tensor) -> EncryptedPrediction:
        """Encrypt one prepared image, have the server evaluate it, decrypt and check the logit.

        Raises
        ------
        InferenceServerError
            If the server refuses the request.
        common.he.keys.IntegrityError
            If the reply does not decrypt cleanly under this session's key.
        """
        traffic = self.client.traffic
        before = (traffic.sent, traffic.received)
        start = time.perf_counter()
        ciphertext = self.keys.encrypt_image(
            image.reshape(image.shape[-2:]).double().numpy(),
            kernel_size=int(self.info["kernel_size"]),
            stride=int(self.info["stride"]),
            slots=int(self.info["slots"]),
        )
        encrypt_s = time.perf_counter() - start
        start = time.perf_counter()
        try:
            reply, evaluate_s = self.client.predict(self.keys.key_id, ciphertext)
        except InferenceServerError as err:
            if err.kind != "unknown_key_set":
                raise
            # The server dropped this key set (restart, or more clinics than server.max_key_sets).
            self._upload()
            reply, evaluate_s = self.client.predict(self.keys.key_id, ciphertext)
        round_trip_s = time.perf_counter() - start
        start = time.perf_counter()
        logit = self.keys.decrypt_logit(reply)
        decrypt_s = time.perf_counter() - start
        return EncryptedPrediction(
            logit=logit,
            encrypt_s=encrypt_s,
            evaluate_s=evaluate_s,
            round_trip_s=round_trip_s,
            decrypt_s=decrypt_s,
            sent_bytes=traffic.sent - before[0],
            received_bytes=traffic.received - before[1],
        )
