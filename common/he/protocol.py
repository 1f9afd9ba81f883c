"""The HTTP protocol between ``privmed-infer`` (clinic) and ``privmed-infer-server`` (model owner)."""

from __future__ import annotations

MODEL_ROUTE = "/v1/model"
KEYS_ROUTE = "/v1/keys"
PREDICT_ROUTE = "/v1/predict"
# Request: which uploaded key set the ciphertext is under. Reply: the key set it was evaluated with.
KEY_HEADER = "X-Privmed-Key-Id"
# Reply: seconds the server spent evaluating (the clinic's latency breakdown).
SECONDS_HEADER = "X-Privmed-Evaluate-Seconds"
