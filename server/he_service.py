"""The model owner's encrypted-inference service, without HTTP (``server/infer_server.py`` wires it).

Clinics upload their public evaluation keys once (a key set, named by its SHA-256) and then
send encrypted images under it. The service checks every key set before keeping it: no
secret key, 128-bit secure parameters, enough levels and slots for the model, rotation and
relinearisation keys present.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import tenseal as ts

from common.he.evaluator import evaluate_encrypted
from common.he.keys import CiphertextError, key_id
from common.he.params import CKKSParams, HEParameterError
from common.he.plan import HEPlan

log = logging.getLogger(__name__)


class KeySetError(ValueError):
    """An uploaded key set the server refuses (the message says why)."""


class SecretKeyReceivedError(KeySetError):
    """An uploaded context holding a secret key: the server must never have it."""


class UnknownKeySetError(LookupError):
    """A prediction under a key set the server does not hold (never uploaded, or dropped)."""


@dataclass(frozen=True)
class ServiceInfo:
    """Public facts about the served model: geometry, preprocessing, classes."""

    geometry: dict[str, int]
    windows: list[list[float] | None]
    class_names: list[str]

    def as_json(self) -> dict:
        return {
            **self.geometry,
            "windows": self.windows,
            "standardize": "per_image",
            "class_names": self.class_names,
            "output": "logit",
            "security": "128-bit (HomomorphicEncryption.org standard)",
        }


class InferenceService:
    """Holds a model's :class:`HEPlan` and clinics' key sets; evaluates encrypted images.

    Parameters
    ----------
    plan : HEPlan
        The served model, reduced for encrypted evaluation.
    info : ServiceInfo
        What ``GET /v1/model`` tells clinics.
    max_key_sets : int
        Key sets kept in memory; the least recently used is dropped beyond it.
    threads : int
        TenSEAL worker threads per key set.
    """

    def __init__(self, plan: HEPlan, info: ServiceInfo, *, max_key_sets: int, threads: int) -> None:
        if max_key_sets < 1 or threads < 1:
            raise ValueError(f"server.max_key_sets and server.threads must be >= 1, got {max_key_sets}, {threads}")
        self.plan, self.info = plan, info
        self.max_key_sets, self.threads = int(max_key_sets), int(threads)
        self._key_sets: OrderedDict[str, ts.Context] = OrderedDict()
        self._lock = threading.Lock()
        # Key loading and encrypted evaluation are CPU-bound and use all TenSEAL threads: one at a time.
        self._heavy = threading.Lock()

    def register_keys(self, public_context: bytes) -> str:
        """Check and keep a clinic's key set; return its id (SHA-256 of the bytes).

        Raises
        ------
        SecretKeyReceivedError
            If the context holds a secret key (it is dropped at once, never stored).
        KeySetError
            If the bytes are no TenSEAL context, the parameters are insecure or too small for
            the model, or rotation/relinearisation keys are missing.
        """
        name = key_id(public_context)
        with self._lock:
            if name in self._key_sets:
                self._key_sets.move_to_end(name)
                return name
        try:
            with self._heavy:  # deserialising ~70 MB of keys is CPU- and memory-heavy too
                context = ts.context_from(public_context, n_threads=self.threads)
        except (RuntimeError, ValueError, TypeError) as err:
            raise KeySetError(f"not a serialised TenSEAL context ({err})") from err
        if context.has_secret_key() or context.is_private():
            del context
            raise SecretKeyReceivedError(
                "the uploaded context holds a secret key; it was discarded. Send only the public context "
                "(Context.serialize(save_secret_key=False)) and generate new keys: this secret key has been exposed"
            )
        try:
            params = CKKSParams.of_context(context)
            params.check_fits(depth=self.plan.depth, slots=self.plan.slots)
        except HEParameterError as err:
            raise KeySetError(str(err)) from err
        missing = [k for k, has in (("Galois (rotation)", context.has_galois_keys()),
                                    ("relinearisation", context.has_relin_keys()),
                                    ("public", context.has_public_key())) if not has]
        if missing:
            raise KeySetError(f"the uploaded context lacks {', '.join(missing)} keys")
        with self._lock:
            self._key_sets[name] = context
            while len(self._key_sets) > self.max_key_sets:
                dropped, _ = self._key_sets.popitem(last=False)
                log.info("key set %s… dropped (server.max_key_sets=%d)", dropped[:12], self.max_key_sets)
        log.info("key set %s… registered: %s", name[:12], params.describe())
        return name

    def predict(self, name: str, ciphertext: bytes) -> tuple[bytes, float]:
        """Evaluate the model on one encrypted image; return the encrypted logit and seconds spent.

        Raises
        ------
        UnknownKeySetError
            If no key set ``name`` is held.
        CiphertextError
            If the bytes are not an encrypted image for that key set and model.
        """
        with self._lock:
            context = self._key_sets.get(name)
            if context is None:
                raise UnknownKeySetError(f"no key set {name[:12]}… here: upload the public context to /v1/keys first")
            self._key_sets.move_to_end(name)
        with self._heavy:
            start = time.perf_counter()
            reply = evaluate_encrypted(self.plan, context, ciphertext)
            return reply, time.perf_counter() - start


__all__ = [
    "CiphertextError",
    "InferenceService",
    "KeySetError",
    "SecretKeyReceivedError",
    "ServiceInfo",
    "UnknownKeySetError",
]
