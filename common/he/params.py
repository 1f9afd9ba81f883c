"""CKKS parameters for encrypted inference, checked for 128-bit security before any key exists.

Security rests on the Ring-LWE problem; for a ring dimension N (``poly_modulus_degree``) the
total bit length of the coefficient modulus bounds the attack cost. We require 128-bit
classical security per the HomomorphicEncryption.org Security Standard (Albrecht et al.,
November 2018), Table 1 (uniform ternary secret, error σ ≈ 3.2): the maximum total
coefficient-modulus bits for each N below. Microsoft SEAL, under TenSEAL, uses the same table
(``CoeffModulus::MaxBitCount(N, sec_level_type::tc128)``; ``tests/test_he_params.py`` compares
them). The clinic's keys and every context the server receives are checked against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tenseal as ts
from omegaconf import DictConfig

# HomomorphicEncryption.org Security Standard (2018), Table 1, 128-bit classical security:
# ring dimension N -> maximum total bits of the coefficient modulus (special prime included).
MAX_COEFF_MODULUS_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
SECURITY_STANDARD = "HomomorphicEncryption.org Security Standard (2018), Table 1, 128-bit classical"
# SEAL draws every prime with at most 60 bits.
MAX_PRIME_BITS = 60


class HEParameterError(ValueError):
    """CKKS parameters that are insecure, malformed or too small for the model."""


@dataclass(frozen=True)
class CKKSParams:
    """CKKS encryption parameters: ring dimension, modulus primes (bits) and fixed-point scale.

    ``coeff_mod_bit_sizes`` is ``[first, rescaling primes..., special]``: each rescaling prime
    is one multiplicative level, the first prime bounds the decrypted result, the special prime
    serves key switching (rotations, relinearisation).

    Raises
    ------
    HEParameterError
        At construction, if the parameters are not 128-bit secure or cannot work.
    """

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    def __post_init__(self) -> None:
        check_security(self.poly_modulus_degree, self.coeff_mod_bit_sizes)
        bits = self.coeff_mod_bit_sizes
        if len(bits) < 3:
            raise HEParameterError(
                f"ckks.coeff_mod_bit_sizes needs a first prime, at least one rescaling prime and a special "
                f"prime, got {list(bits)}"
            )
        rescaling = bits[1:-1]
        if any(b != self.scale_bits for b in rescaling):
            raise HEParameterError(
                f"ckks.coeff_mod_bit_sizes rescaling primes {list(rescaling)} must all equal scale_bits="
                f"{self.scale_bits}, or the scale drifts at every level"
            )
        if bits[0] <= self.scale_bits:
            raise HEParameterError(
                f"ckks.coeff_mod_bit_sizes first prime ({bits[0]} bits) must exceed scale_bits={self.scale_bits}: "
                "it holds the decrypted result"
            )
        if bits[-1] < max(bits[:-1]):
            raise HEParameterError(
                f"ckks.coeff_mod_bit_sizes special prime ({bits[-1]} bits) must be at least the largest other "
                f"prime ({max(bits[:-1])} bits), or key switching destroys precision"
            )

    @classmethod
    def from_config(cls, ckks: DictConfig) -> CKKSParams:
        """From the ``ckks`` block of ``conf/inference/he.yaml``."""
        return cls(
            poly_modulus_degree=int(ckks.poly_modulus_degree),
            coeff_mod_bit_sizes=tuple(int(b) for b in ckks.coeff_mod_bit_sizes),
            scale_bits=int(ckks.scale_bits),
        )

    @classmethod
    def of_context(cls, context: ts.Context) -> CKKSParams:
        """The parameters of a (received) TenSEAL context, checked like configured ones.

        Raises
        ------
        HEParameterError
            If the context is not CKKS-like, insecure or malformed.
        """
        parms = context.seal_context().data.key_context_data().parms()
        scale = context.global_scale
        if not scale > 1 or not math.log2(scale).is_integer():
            raise HEParameterError(f"context's global scale must be a power of two > 1, got {scale}")
        return cls(
            poly_modulus_degree=int(parms.poly_modulus_degree()),
            coeff_mod_bit_sizes=tuple(int(m.bit_count()) for m in parms.coeff_modulus()),
            scale_bits=int(math.log2(scale)),
        )

    @property
    def levels(self) -> int:
        """Multiplications in depth the parameters allow (one per rescaling prime)."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def slots(self) -> int:
        """Values one CKKS ciphertext holds (N / 2)."""
        return self.poly_modulus_degree // 2

    @property
    def max_abs_result(self) -> float:
        """Largest |value| the final level can hold before decryption wraps around."""
        return 2.0 ** (self.coeff_mod_bit_sizes[0] - self.scale_bits - 1)

    def describe(self) -> str:
        """One line for logs and reports."""
        return (f"CKKS N={self.poly_modulus_degree}, q={list(self.coeff_mod_bit_sizes)} "
                f"({sum(self.coeff_mod_bit_sizes)} bits), scale 2^{self.scale_bits}, 128-bit secure")

    def check_fits(self, *, depth: int, slots: int) -> None:
        """Check the parameters can evaluate a model of multiplicative ``depth`` on ``slots`` values.

        Raises
        ------
        HEParameterError
            Naming what is missing and what would fit.
        """
        if self.levels < depth:
            raise HEParameterError(
                f"the model needs {depth} multiplicative levels, {self.describe()} has {self.levels}: "
                f"use {depth} rescaling primes in ckks.coeff_mod_bit_sizes"
            )
        if self.slots < slots:
            fitting = [n for n in MAX_COEFF_MODULUS_BITS_128 if n // 2 >= slots]
            hint = f"poly_modulus_degree >= {fitting[0]}" if fitting else "a smaller image or larger stride"
            raise HEParameterError(
                f"one encrypted image needs {slots} slots, poly_modulus_degree={self.poly_modulus_degree} has "
                f"{self.slots}: use {hint}"
            )

    def new_context(self, *, n_threads: int | None = None) -> ts.Context:
        """A fresh private context: secret, public and relinearisation keys (Galois keys on demand)."""
        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=self.poly_modulus_degree,
            coeff_mod_bit_sizes=list(self.coeff_mod_bit_sizes),
            n_threads=n_threads,
        )
        context.global_scale = 2.0**self.scale_bits
        return context


def check_security(poly_modulus_degree: int, coeff_mod_bit_sizes: tuple[int, ...] | list[int]) -> None:
    """Refuse parameters below 128-bit security (see the module docstring for the standard).

    Raises
    ------
    HEParameterError
        If N is not in the table or the modulus is longer than it allows.
    """
    if poly_modulus_degree not in MAX_COEFF_MODULUS_BITS_128:
        raise HEParameterError(
            f"ckks.poly_modulus_degree must be one of {sorted(MAX_COEFF_MODULUS_BITS_128)}, got {poly_modulus_degree}"
        )
    bad = [b for b in coeff_mod_bit_sizes if not 1 <= b <= MAX_PRIME_BITS]
    if bad:
        raise HEParameterError(f"ckks.coeff_mod_bit_sizes entries must be in [1, {MAX_PRIME_BITS}], got {bad}")
    total, limit = sum(coeff_mod_bit_sizes), MAX_COEFF_MODULUS_BITS_128[poly_modulus_degree]
    if total > limit:
        raise HEParameterError(
            f"ckks.coeff_mod_bit_sizes total {total} bits exceeds {limit}, the maximum for poly_modulus_degree="
            f"{poly_modulus_degree} at 128-bit security ({SECURITY_STANDARD}); use fewer or smaller primes, or a "
            "larger poly_modulus_degree"
        )
