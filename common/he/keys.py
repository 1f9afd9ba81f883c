"""The clinic's side of encrypted inference: its CKKS keys, encryption, decryption and checks.

The secret key is generated here and never serialised: :meth:`ClinicKeys.public_context`
holds the public, relinearisation and Galois keys only, which let the server compute on the
clinic's ciphertexts but not decrypt them.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import tenseal as ts
from tenseal import sealapi

from common.he.params import CKKSParams
from common.he.plan import HE_SCHEDULE


class IntegrityError(ValueError):
    """A reply that does not decrypt to one clean logit: wrong key, tampering or overflow."""


class CiphertextError(ValueError):
    """Bytes that are not a ciphertext for these keys and this model."""


def key_id(public_context: bytes) -> str:
    """Content address of a public context (SHA-256): how client and server name a key set."""
    return hashlib.sha256(public_context).hexdigest()


class ClinicKeys:
    """A clinic's key set for one session of encrypted predictions.

    1. Generate a private CKKS context (secret, public and relinearisation keys).
    2. :meth:`public_context`: the evaluation keys for the server (Galois keys generated on
       first use: encrypting and decrypting do not need them), without the secret key.
    3. :meth:`encrypt_image`: im2col-encode one preprocessed image and encrypt it.
    4. :meth:`decrypt_logit`: decrypt a reply and check it before trusting it. Its scale and
       level must be exactly those the evaluation's multiplications produce (replayed on a
       probe), and every slot except the logit's must decrypt to about zero (the server masks
       them). A reply decrypted under another secret key, or altered on the way, decrypts to
       large values in every slot; an altered scale field is caught by the first check.

    Parameters
    ----------
    params : CKKSParams
        Checked for 128-bit security when constructed.
    integrity_tolerance : float
        Largest |value| accepted in the slots that must be zero.
    """

    def __init__(self, params: CKKSParams, *, integrity_tolerance: float, n_threads: int | None = None) -> None:
        if not integrity_tolerance > 0:
            raise ValueError(f"ckks.integrity_tolerance must be > 0, got {integrity_tolerance}")
        self.params = params
        self.integrity_tolerance = float(integrity_tolerance)
        self._context = params.new_context(n_threads=n_threads)
        self._public: bytes | None = None
        self._seal: tuple[sealapi.SEALContext, sealapi.CKKSEncoder] | None = None
        self._honest: tuple[float, int] | None = None

    def public_context(self) -> bytes:
        """Serialised public context: public, relinearisation and Galois keys; no secret key."""
        if self._public is None:
            if not self._context.has_galois_keys():
                self._context.generate_galois_keys()
            self._public = self._context.serialize(
                save_public_key=True, save_secret_key=False, save_galois_keys=True, save_relin_keys=True
            )
        return self._public

    @property
    def key_id(self) -> str:
        return key_id(self.public_context())

    def encrypt_image(self, image: np.ndarray, *, kernel_size: int, stride: int, slots: int) -> bytes:
        """Encrypt a preprocessed ``[S, S]`` image in TenSEAL's im2col layout for the model's convolution.

        Raises
        ------
        ValueError
            If the image is not square and 2D, or its encoding does not have the model's ``slots``.
        """
        image = np.asarray(image, dtype=np.float64)
        if image.ndim != 2 or image.shape[0] != image.shape[1]:
            raise ValueError(f"expected one square 2D image, got shape {image.shape}")
        vector, _ = ts.im2col_encoding(self._context, image.tolist(), kernel_size, kernel_size, stride)
        if vector.size() != slots:
            raise ValueError(f"the image encodes to {vector.size()} values, the model expects {slots}")
        return vector.serialize()

    def decrypt_logit(self, reply: bytes) -> float:
        """Decrypt the server's reply to the logit.

        Raises
        ------
        CiphertextError
            If the bytes are not a ciphertext under these parameters.
        IntegrityError
            If the reply does not decrypt to one logit with every other slot about zero.
        """
        try:
            vector = ts.ckks_vector_from(self._context, reply)
        except (RuntimeError, ValueError, TypeError) as err:
            raise CiphertextError(f"the server's reply is not a ciphertext for this key set ({err})") from err
        if vector.size() != 1 or len(vector.ciphertext()) != 1:
            raise IntegrityError(f"the reply holds {vector.size()} values, expected one logit")
        found = (vector.ciphertext()[0].scale, vector.ciphertext()[0].coeff_modulus_size())
        if found != self._honest_scale_and_level():
            raise IntegrityError(
                f"the reply has scale {found[0]:.6g} at {found[1]} primes, an honest evaluation gives "
                f"{self._honest_scale_and_level()[0]:.6g} at {self._honest_scale_and_level()[1]}: altered in transit "
                "or not computed by privmed's evaluator"
            )
        slots = self._decode_all_slots(vector)
        logit, rest = slots[0].real, np.concatenate([[slots[0].imag], slots[1:].real, slots[1:].imag])
        worst = float(np.max(np.abs(rest)))
        if not np.isfinite(worst) or worst > self.integrity_tolerance:
            raise IntegrityError(
                f"the reply failed the integrity check (|value| up to {worst:.3g} where ~0 is expected, tolerance "
                f"{self.integrity_tolerance:g}): it was encrypted under another key set, altered in transit, or "
                f"the logit exceeded ±{self.params.max_abs_result:g}"
            )
        return float(logit)

    def _honest_scale_and_level(self) -> tuple[float, int]:
        """Replay the evaluation's multiplications (``HE_SCHEDULE``) on a probe: scale and primes left."""
        if self._honest is None:
            probe = ts.ckks_vector(self._context, [1.0])
            for step in HE_SCHEDULE:
                probe = probe.square() if step == "square" else probe.mul([1.0])
            self._honest = (probe.ciphertext()[0].scale, probe.ciphertext()[0].coeff_modulus_size())
        return self._honest

    def _decode_all_slots(self, vector: ts.CKKSVector) -> np.ndarray:
        """Every slot of the reply, real and imaginary parts.

        TenSEAL decodes only the vector's declared size and only real parts; SEAL's own
        encoder (TenSEAL's ``sealapi`` bindings) decodes all N/2 complex slots. The two
        libraries share no objects, so the decrypted plaintext (the prediction, not a key)
        crosses over in a private temporary file.
        """
        plaintext = ts._ts_cpp.Plaintext()
        self._context.decryptor().data.decrypt(vector.ciphertext()[0], plaintext)
        seal_context, encoder = self._seal_encoder()
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "reply.plain")
            plaintext.save(path)
            loaded = sealapi.Plaintext()
            loaded.load(seal_context, path)
        return np.asarray(encoder.decode_complex(loaded))

    def _seal_encoder(self) -> tuple[sealapi.SEALContext, sealapi.CKKSEncoder]:
        if self._seal is None:
            parms = self._context.seal_context().data.key_context_data().parms()
            mirror = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
            mirror.set_poly_modulus_degree(parms.poly_modulus_degree())
            mirror.set_coeff_modulus([sealapi.Modulus(m.value()) for m in parms.coeff_modulus()])
            seal_context = sealapi.SEALContext(mirror, True, sealapi.SEC_LEVEL_TYPE.TC128)
            self._seal = (seal_context, sealapi.CKKSEncoder(seal_context))
        return self._seal
