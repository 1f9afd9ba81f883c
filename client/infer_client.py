"""HTTP client for ``privmed-infer-server``: what a clinic sends and receives, and how many bytes.

Only public or encrypted material goes out: the public TenSEAL context (evaluation keys, no
secret key) and ciphertexts. The server's errors come back as :class:`InferenceServerError`
carrying its status, kind and message.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from common.he.protocol import KEY_HEADER, KEYS_ROUTE, MODEL_ROUTE, PREDICT_ROUTE, SECONDS_HEADER


class InferenceServerError(RuntimeError):
    """The server refused a request or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, kind: str = "unreachable") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


@dataclass
class Traffic:
    """Bytes sent and received, counted per request body (HTTP headers excluded)."""

    sent: int = 0
    received: int = 0
    requests: list[tuple[str, int, int]] = field(default_factory=list)

    def add(self, route: str, sent: int, received: int) -> None:
        self.sent += sent
        self.received += received
        self.requests.append((route, sent, received))


class InferenceClient:
    """Talks to one ``privmed-infer-server``.

    Parameters
    ----------
    url : str
        Base URL, e.g. ``http://127.0.0.1:8765``.
    timeout_s : float
        Seconds to wait for each reply.
    """

    def __init__(self, url: str, *, timeout_s: float) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--server must be an http:// or https:// URL, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout_s = float(timeout_s)
        self.traffic = Traffic()

    def model_info(self) -> dict:
        """``GET /v1/model``: the served model's public geometry and preprocessing."""
        body, _ = self._request("GET", MODEL_ROUTE)
        return json.loads(body)

    def upload_keys(self, public_context: bytes) -> str:
        """``POST /v1/keys``: register the evaluation keys; returns the server's key-set id."""
        body, _ = self._request("POST", KEYS_ROUTE, public_context)
        return str(json.loads(body)["key_id"])

    def predict(self, key_set: str, ciphertext: bytes) -> tuple[bytes, float]:
        """``POST /v1/predict``: the encrypted logit and the server's evaluation seconds.

        Raises
        ------
        InferenceServerError
            Also when the reply names another key set than the one asked for.
        """
        body, headers = self._request("POST", PREDICT_ROUTE, ciphertext, {KEY_HEADER: key_set})
        if headers.get(KEY_HEADER) != key_set:
            raise InferenceServerError(
                f"the server answered for key set {headers.get(KEY_HEADER)!r}, not {key_set!r}", kind="mismatch"
            )
        return body, float(headers.get(SECONDS_HEADER, "nan"))

    def _request(
        self, method: str, route: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[bytes, dict[str, str]]:
        request = urllib.request.Request(self.url + route, data=body, method=method, headers=dict(headers or {}))
        if body is not None:
            request.add_header("Content-Type", "application/octet-stream")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                reply = response.read()
                self.traffic.add(route, len(body or b""), len(reply))
                return reply, dict(response.headers)
        except urllib.error.HTTPError as err:
            payload = err.read()
            try:
                detail = json.loads(payload)
                kind, message = str(detail["error"]), str(detail["message"])
            except (ValueError, KeyError, TypeError):
                kind, message = "http", payload[:200].decode(errors="replace") or err.reason
            raise InferenceServerError(
                f"{method} {route} -> HTTP {err.code} {kind}: {message}", status=err.code, kind=kind
            ) from err
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise InferenceServerError(f"cannot reach {self.url} ({reason})") from err
