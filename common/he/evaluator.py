"""The model owner's side of encrypted inference: evaluate an :class:`HEPlan` on ciphertext.

The server holds the clinic's public evaluation keys only; it computes on the encrypted
image and returns an encrypted logit it cannot read.
"""

from __future__ import annotations

import tenseal as ts

from common.he.keys import CiphertextError
from common.he.plan import HEPlan


def evaluate_encrypted(plan: HEPlan, context: ts.Context, ciphertext: bytes) -> bytes:
    """Evaluate ``plan`` on one encrypted image and return the encrypted logit.

    1. Load the ciphertext under the clinic's public context; it must be one fresh im2col
       encoding of the model's geometry (all levels left, the context's scale).
    2. Per channel: encrypted convolution with the plaintext kernel (TenSEAL ``conv2d_im2col``)
       plus its bias, then the square (ciphertext x ciphertext, relinearised).
    3. Per channel: dot product with the channel's folded head weights; sum the channels and
       add the head bias. The rotations that sum a vector leave partial sums in the other
       slots, which would reveal each position's weighted contribution.
    4. Multiply by the mask ``[1, 0, 0, ...]``: only the logit's slot survives, so the clinic
       learns the prediction and nothing else the computation touched.

    The multiplications are ``HE_SCHEDULE`` in ``common/he/plan.py``, which the clinic replays
    to check the reply's scale: change one, change the other.

    Raises
    ------
    CiphertextError
        If the bytes are not such a ciphertext for this context.
    """
    # 1. Load and check.
    try:
        image = ts.ckks_vector_from(context, ciphertext)
    except (RuntimeError, ValueError, TypeError) as err:
        raise CiphertextError(f"not a CKKS ciphertext for the uploaded key set ({err})") from err
    parts = image.ciphertext()
    if len(parts) != 1 or image.size() != plan.slots:
        raise CiphertextError(
            f"expected one im2col-encoded {plan.image_size} px image ({plan.slots} values in one ciphertext), "
            f"got {image.size()} values in {len(parts)}"
        )
    levels_left = parts[0].coeff_modulus_size() - 1
    if levels_left < plan.depth or parts[0].scale != context.global_scale:
        raise CiphertextError(
            f"the ciphertext is not fresh ({levels_left} levels left, scale {parts[0].scale:g}); the model needs "
            f"{plan.depth} levels at scale {context.global_scale:g}"
        )
    # 2.-3. Convolution, square and head, one channel at a time.
    logit = None
    for kernel, bias, head in zip(plan.kernels, plan.conv_bias, plan.head, strict=True):
        channel = image.conv2d_im2col(kernel.tolist(), plan.windows)
        channel.add_([float(bias)] * plan.windows)
        channel.square_()
        channel.dot_(head.tolist())
        logit = channel if logit is None else logit.add_(channel)
    logit.add_([plan.head_bias])
    # 4. Keep only the logit's slot.
    logit.mul_([1.0])
    return logit.serialize()
