"""``privmed-infer-server``: serve a trained ``he_cnn`` for encrypted inference over HTTP.

Routes (``server/he_service.py`` does the work):

- ``GET /v1/model``: public geometry and preprocessing (JSON), no weights;
- ``POST /v1/keys``: a clinic's public TenSEAL context -> ``{"key_id": ...}``;
- ``POST /v1/predict`` with header ``X-Privmed-Key-Id``: an encrypted image -> the encrypted logit.

Every request body needs a ``Content-Length`` within the configured limit; errors are JSON
``{"error": kind, "message": ...}`` with a 4xx status for the client's mistakes.

Examples
--------
privmed-infer-server --model runs:/<run id>/model --host 127.0.0.1 --port 8765
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from omegaconf import DictConfig

from common.he.keys import CiphertextError
from common.he.model_source import ModelSourceError, load_model
from common.he.plan import NotHEEvaluableError, plan_from_model
from common.he.protocol import KEY_HEADER, KEYS_ROUTE, MODEL_ROUTE, PREDICT_ROUTE, SECONDS_HEADER
from common.he.settings import DEFAULT_CONFIG, load_he_config
from server.he_service import (
    InferenceService,
    KeySetError,
    SecretKeyReceivedError,
    ServiceInfo,
    UnknownKeySetError,
)

log = logging.getLogger("privmed.infer_server")



class _HTTPError(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


class InferenceHandler(BaseHTTPRequestHandler):
    """Translates HTTP requests into :class:`InferenceService` calls and back."""

    server: InferenceHTTPServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        # Seconds a client may stall while sending a request (slow senders hold a thread).
        self.timeout = self.server.read_timeout_s
        super().setup()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._dispatch({MODEL_ROUTE: lambda: self._json(200, self.server.service.info.as_json())})

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch({KEYS_ROUTE: self._keys, PREDICT_ROUTE: self._predict})

    def _dispatch(self, routes: dict) -> None:
        try:
            route = routes.get(self.path)
            if route is None:
                raise _HTTPError(404, "not_found", f"no route {self.command} {self.path}")
            route()
        except _HTTPError as err:
            self._error(err.status, err.kind, str(err))
        except SecretKeyReceivedError as err:
            self._error(400, "secret_key_received", str(err))
        except KeySetError as err:
            self._error(400, "bad_key_set", str(err))
        except UnknownKeySetError as err:
            self._error(404, "unknown_key_set", str(err))
        except CiphertextError as err:
            self._error(400, "bad_ciphertext", str(err))
        except Exception:  # the client gets a generic reply; the details go to the server's log
            log.exception("%s %s failed", self.command, self.path)
            self._error(500, "internal", "the server failed to evaluate the request; see the server's log")

    def _keys(self) -> None:
        body = self._body(self.server.max_key_bytes)
        self._json(200, {"key_id": self.server.service.register_keys(body)})

    def _predict(self) -> None:
        name = self.headers.get(KEY_HEADER, "")
        if not name:
            raise _HTTPError(400, "missing_key_id", f"header {KEY_HEADER} names the key set (from /v1/keys)")
        body = self._body(self.server.max_ciphertext_bytes)
        reply, seconds = self.server.service.predict(name, body)
        self._send(200, reply, "application/octet-stream", {KEY_HEADER: name, SECONDS_HEADER: f"{seconds:.4f}"})

    def _body(self, limit: int) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise _HTTPError(411, "length_required", "send the body with a Content-Length header")
        if int(length) > limit:
            self.close_connection = True  # the unread body must not be parsed as the next request
            raise _HTTPError(413, "too_large", f"request body of {int(length)} bytes exceeds the limit of {limit}")
        body = self.rfile.read(int(length))
        if len(body) != int(length):
            raise _HTTPError(400, "truncated", f"received {len(body)} of {int(length)} bytes")
        return body

    def _json(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", {})

    def _error(self, status: int, kind: str, message: str) -> None:
        log.warning("%s %s -> %d %s: %s", self.command, self.path, status, kind, message)
        self._json(status, {"error": kind, "message": message})

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        log.info("%s " + format, self.address_string(), *args)


class InferenceHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server bound to one :class:`InferenceService` and its limits."""

    daemon_threads = True

    def __init__(self, service: InferenceService, server_cfg: DictConfig, *, host: str, port: int) -> None:
        self.service = service
        self.max_key_bytes = int(server_cfg.max_key_bytes)
        self.max_ciphertext_bytes = int(server_cfg.max_ciphertext_bytes)
        self.read_timeout_s = float(server_cfg.read_timeout_s)
        super().__init__((host, port), InferenceHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def build_server(model: str, he_cfg: DictConfig, *, host: str, port: int) -> InferenceHTTPServer:
    """Load ``model``, reduce it for encrypted evaluation and bind the HTTP server (not yet serving).

    Raises
    ------
    ModelSourceError
        If ``model`` names nothing loadable.
    NotHEEvaluableError
        If the model is not an ``he_cnn``.
    """
    loaded = load_model(model)
    plan = plan_from_model(loaded.module, image_size=loaded.image_size)
    info = ServiceInfo(geometry=plan.public(), windows=loaded.windows, class_names=loaded.class_names)
    server_cfg = he_cfg.server
    service = InferenceService(plan, info, max_key_sets=server_cfg.max_key_sets, threads=server_cfg.threads)
    return InferenceHTTPServer(service, server_cfg, host=host, port=port)


def _stop(signum: int, frame: object) -> None:
    """SIGTERM (systemd, docker stop, tests) stops the server like Ctrl-C."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    summary = __doc__.split("\n\n")[0].replace("``", "")
    parser = argparse.ArgumentParser(prog="privmed-infer-server", description=summary)
    parser.add_argument("--model", required=True, help="runs:/<id>/model, models:/<name>/<version>, or a state dict")
    parser.add_argument("--host", help="address to listen on (default: server.host of the config)")
    parser.add_argument("--port", type=int, help="port (default: server.port of the config; 0 picks a free one)")
    parser.add_argument("--config", help=f"inference config (default {DEFAULT_CONFIG})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    try:
        he_cfg = load_he_config(args.config)
        host = args.host or str(he_cfg.server.host)
        port = int(he_cfg.server.port if args.port is None else args.port)
        server = build_server(args.model, he_cfg, host=host, port=port)
    except (FileNotFoundError, ValueError, ModelSourceError, NotHEEvaluableError, OSError) as err:
        print(f"privmed-infer-server: {err}", file=sys.stderr)
        sys.exit(2)
    signal.signal(signal.SIGTERM, _stop)
    print(f"privmed-infer-server: serving {args.model} at {server.url} ({server.service.plan.public()})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        print("privmed-infer-server: stopped", flush=True)


if __name__ == "__main__":
    main()
