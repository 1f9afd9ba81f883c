"""Encrypted inference over HTTP on 127.0.0.1: a real server thread on a free port, real CKKS keys,
the site's JPEGs written by the synthetic writer and read back by the readers."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path

import pytest
import tenseal as ts
import torch
from omegaconf import OmegaConf

from client.encrypted_inference import EncryptedInferenceSession, sigmoid
from client.infer_client import InferenceClient, InferenceServerError
from common.data.synthesize import ensure_synthetic
from common.federation_config import site_view
from common.he.keys import CiphertextError, ClinicKeys, IntegrityError
from common.he.params import CKKSParams
from common.he.settings import load_he_config
from common.models import build_model
from common.run_config import compose_config
from server.infer_server import build_server

pytestmark = pytest.mark.slow
# The bound on |encrypted - plaintext| probability.
MAX_PROBABILITY_DIFF = 1e-3


@pytest.fixture(scope="module")
def he_cfg():
    return load_he_config()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A he_cnn laid out as a run's artifacts (model/ + config/), and hospital_a's test JPEGs."""
    tmp = tmp_path_factory.mktemp("he")
    cfg = compose_config([f"state_root={tmp / 'state'}", "model=he_cnn",
                          "federation.sites.hospital_a.data.num_train=16",
                          "federation.sites.hospital_a.data.num_test=8"])
    torch.manual_seed(7)
    model = build_model(cfg.model).eval()
    with torch.no_grad():  # logits of a few units, like a trained model's, not ~0 like a fresh one's
        model[4].weight.mul_(20.0)
    run = tmp / "run"
    (run / "model").mkdir(parents=True)
    (run / "config").mkdir()
    torch.save(model.state_dict(), run / "model" / "state_dict.pt")
    (run / "model" / "model_config.yaml").write_text(OmegaConf.to_yaml(cfg.model))
    (run / "config" / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg))
    view = site_view(cfg, "hospital_a")
    ensure_synthetic(Path(view.data.root), task=cfg.task, data=view.data)
    files = {c: sorted(Path(view.data.root).glob(f"test/{c}/*.jpeg")) for c in view.data.classes}
    return model, run / "model", files


@pytest.fixture(scope="module")
def server(trained, he_cfg):
    srv = build_server(str(trained[1]), he_cfg, host="127.0.0.1", port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def session(server, he_cfg):
    client = InferenceClient(server.url, timeout_s=he_cfg.client.timeout_s)
    return EncryptedInferenceSession(client, CKKSParams.from_config(he_cfg.ckks),
                                     integrity_tolerance=he_cfg.ckks.integrity_tolerance)


@pytest.fixture(scope="module")
def one_reply(session, trained):
    """One NORMAL JPEG's prepared image, its ciphertext and the server's encrypted reply, raw."""
    image = session.read_image(trained[2]["NORMAL"][0])
    geometry = {k: int(session.info[k]) for k in ("kernel_size", "stride", "slots")}
    ciphertext = session.keys.encrypt_image(image[0, 0].double().numpy(), **geometry)
    reply, _ = session.client.predict(session.keys.key_id, ciphertext)
    return image, ciphertext, reply


def test_encrypted_prediction_matches_plaintext_on_site_jpegs(server, session, trained, one_reply):
    model, _, files = trained
    image = session.read_image(files["PNEUMONIA"][0])
    # A server that dropped the key set (restart, or more clinics than max_key_sets) gets it again.
    server.service._key_sets.clear()
    result = session.predict(image)
    assert result.sent_bytes > session.key_bytes
    # Per image: one ciphertext up (~0.4 MB), one encrypted logit down.
    route, sent, received = session.client.traffic.requests[-1]
    assert route == "/v1/predict" and 100_000 < sent < 1_000_000 and 0 < received < 500_000
    normal = (one_reply[0], session.keys.decrypt_logit(one_reply[2]))
    for image, encrypted_logit in ((image, result.logit), normal):
        with torch.no_grad():
            logit = float(model(image).item())
        assert abs(sigmoid(encrypted_logit) - sigmoid(logit)) <= MAX_PROBABILITY_DIFF
        assert encrypted_logit == pytest.approx(logit, abs=3e-2)  # CKKS at scale 2^30: ~1e-3 typical
        assert (sigmoid(encrypted_logit) >= 0.5) == (sigmoid(logit) >= 0.5)


def test_server_holds_no_secret_key(server, session):
    session.client.upload_keys(session.keys.public_context())  # already held: returns at once
    held = server.service._key_sets[session.keys.key_id]
    assert not held.has_secret_key() and held.is_public()
    assert held.has_galois_keys() and held.has_relin_keys()


def test_reply_decrypted_with_another_key_is_refused(he_cfg, one_reply):
    stranger = ClinicKeys(CKKSParams.from_config(he_cfg.ckks), integrity_tolerance=he_cfg.ckks.integrity_tolerance)
    with pytest.raises(IntegrityError, match="another key set, altered in transit"):
        stranger.decrypt_logit(one_reply[2])


def test_image_encrypted_under_another_key_gives_an_integrity_error(session, he_cfg, one_reply):
    # The server cannot tell (CKKS ciphertexts look random); the clinic's check catches it.
    stranger = ClinicKeys(CKKSParams.from_config(he_cfg.ckks), integrity_tolerance=he_cfg.ckks.integrity_tolerance)
    geometry = {k: int(session.info[k]) for k in ("kernel_size", "stride", "slots")}
    foreign = stranger.encrypt_image(one_reply[0][0, 0].double().numpy(), **geometry)
    reply, _ = session.client.predict(session.keys.key_id, foreign)
    with pytest.raises(IntegrityError):
        session.keys.decrypt_logit(reply)


def test_tampered_reply_is_refused_never_misread(session, one_reply):
    reply = one_reply[2]
    honest = session.keys.decrypt_logit(reply)
    refused = 0
    # Every byte of the header (format, sizes, scale) and a sample of the ciphertext data.
    for position in [*range(120), *range(120, len(reply), 1009)]:
        tampered = bytearray(reply)
        tampered[position] ^= 0x5A
        try:
            value = session.keys.decrypt_logit(bytes(tampered))
        except (IntegrityError, CiphertextError):
            refused += 1
        else:  # a byte no decryption depends on (padding, unused fields): the same logit
            assert value == honest, f"byte {position} altered the logit silently"
    assert refused > 100


def test_bad_ciphertexts_are_refused_with_400(session, one_reply):
    with pytest.raises(InferenceServerError, match="HTTP 400 bad_ciphertext: not a CKKS ciphertext"):
        session.client.predict(session.keys.key_id, one_reply[1][: len(one_reply[1]) // 2])
    small = ts.ckks_vector(session.keys._context, [1.0, 2.0]).serialize()
    with pytest.raises(InferenceServerError, match="expected one im2col-encoded 32 px image"):
        session.client.predict(session.keys.key_id, small)


def test_context_with_secret_key_is_refused(server, session, he_cfg):
    private = CKKSParams.from_config(he_cfg.ckks).new_context()
    with pytest.raises(InferenceServerError, match="HTTP 400 secret_key_received.*discarded") as err:
        session.client.upload_keys(private.serialize(save_secret_key=True))
    assert err.value.status == 400
    with pytest.raises(InferenceServerError, match="unknown_key_set"):
        session.client.predict("0" * 64, b"x")


@pytest.mark.parametrize(
    "bits,galois,match",
    [
        ((40, 30, 30, 58), False, "needs 4 multiplicative levels"),
        ((38, 30, 30, 30, 30, 58), False, "lacks Galois \\(rotation\\) keys"),
    ],
)
def test_unusable_key_sets_are_refused(session, bits, galois, match):
    context = CKKSParams(poly_modulus_degree=8192, coeff_mod_bit_sizes=bits, scale_bits=30).new_context()
    with pytest.raises(InferenceServerError, match=f"400 bad_key_set: .*{match}"):
        session.client.upload_keys(context.serialize(save_secret_key=False))


def _raw(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.putrequest(method, path)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def test_http_errors_are_clear_json(server, he_cfg):
    status, info = _raw(server, "GET", "/v1/model")
    assert status == 200 and info["image_size"] == 32 and info["windows"] == [None]
    assert info["class_names"] == ["NORMAL", "PNEUMONIA"] and "head" not in info
    assert _raw(server, "GET", "/v1/nothing")[0] == 404
    status, body = _raw(server, "POST", "/v1/keys")
    assert (status, body["error"]) == (411, "length_required")
    too_big = str(he_cfg.server.max_ciphertext_bytes + 1)
    status, body = _raw(server, "POST", "/v1/predict", headers={"Content-Length": too_big, "X-Privmed-Key-Id": "a"})
    assert (status, body["error"]) == (413, "too_large") and "exceeds the limit" in body["message"]
    status, body = _raw(server, "POST", "/v1/predict", b"abc", {"Content-Length": "3"})
    assert (status, body["error"]) == (400, "missing_key_id")


def test_unreachable_server_is_one_clear_error(server):
    with pytest.raises(InferenceServerError, match="cannot reach http://127.0.0.1:9"):
        InferenceClient("http://127.0.0.1:9", timeout_s=5).model_info()
