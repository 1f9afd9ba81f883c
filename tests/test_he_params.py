"""CKKS parameters: 128-bit security per the HomomorphicEncryption.org table, checked against SEAL."""

from __future__ import annotations

import pytest
import tenseal as ts
from tenseal import sealapi

from common.he.params import MAX_COEFF_MODULUS_BITS_128, CKKSParams, HEParameterError, check_security
from common.he.plan import HE_DEPTH
from common.he.settings import load_he_config


def test_security_table_matches_seal_independently():
    seal = {n: sealapi.CoeffModulus.MaxBitCount(n, sealapi.SEC_LEVEL_TYPE.TC128) for n in MAX_COEFF_MODULUS_BITS_128}
    assert seal == MAX_COEFF_MODULUS_BITS_128


def test_default_parameters_are_128_bit_and_fit_the_default_model():
    params = CKKSParams.from_config(load_he_config().ckks)
    assert sum(params.coeff_mod_bit_sizes) <= MAX_COEFF_MODULUS_BITS_128[params.poly_modulus_degree]
    # conv 15 x 15 windows x 16 pixels at 32 px
    params.check_fits(depth=HE_DEPTH, slots=15 * 15 * 16)
    assert params.levels == HE_DEPTH and params.max_abs_result == 128


@pytest.mark.parametrize(
    "n,bits,scale,match",
    [
        (8192, (60, 40, 40, 40, 40, 60), 40, "total 280 bits exceeds 218.*128-bit security.*HomomorphicEncryption.org"),
        (4096, (40, 20, 20, 40), 20, "total 120 bits exceeds 109"),
        (6000, (30, 20, 30), 20, "poly_modulus_degree must be one of"),
        (8192, (61, 30, 61), 30, "must be in \\[1, 60\\]"),
        (8192, (38, 30, 31, 58), 30, "rescaling primes \\[30, 31\\] must all equal scale_bits=30"),
        (8192, (30, 30, 30, 58), 30, "first prime \\(30 bits\\) must exceed scale_bits=30"),
        (8192, (38, 30, 30, 36), 30, "special prime \\(36 bits\\) must be at least the largest other prime"),
        (8192, (38, 58), 30, "needs a first prime, at least one rescaling prime and a special prime"),
    ],
)
def test_insecure_or_broken_parameters_are_refused(n, bits, scale, match):
    with pytest.raises(HEParameterError, match=match):
        CKKSParams(poly_modulus_degree=n, coeff_mod_bit_sizes=bits, scale_bits=scale)


def test_seal_itself_refuses_what_the_table_refuses():
    # Negative control for the table: SEAL will not even build the 280-bit context at N = 8192.
    with pytest.raises(ValueError):
        ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 40, 40, 60])
    check_security(16384, [60, 40, 40, 40, 40, 60])  # the same primes are fine at N = 16384


def test_too_few_levels_or_slots_name_what_would_fit():
    params = CKKSParams(poly_modulus_degree=8192, coeff_mod_bit_sizes=(40, 30, 30, 58), scale_bits=30)
    with pytest.raises(HEParameterError, match="needs 4 multiplicative levels.*has 2"):
        params.check_fits(depth=4, slots=100)
    with pytest.raises(HEParameterError, match="needs 15376 slots.*has 4096.*poly_modulus_degree >= 32768"):
        params.check_fits(depth=1, slots=15376)


def test_parameters_read_back_from_a_context():
    params = CKKSParams.from_config(load_he_config().ckks)
    context = params.new_context()
    assert CKKSParams.of_context(context) == params
    assert context.has_secret_key() and context.has_relin_keys()
