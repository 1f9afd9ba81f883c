"""What leaves a hospital: every key of every message leaving a site's ClientApp is declared.

An outermost mod (outside the error sanitiser and SecAgg+) records what each site really sends
in real Flower simulations of every mode, and the test fails on any key missing from
``common/privacy/release_inventory.py``. One simulation serves several checks: hospital_b trains
without DP (privacy=none keys) and hospital_c reads real files with a patient in both the train
and test folders (what the coordinator learns of a failure).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from data_helpers import CLASSES, xray_patients
from flwr.app import Context, Message
from mlflow.tracking import MlflowClient

from common.data.synthetic_files import write_kermany
from common.federation_config import ConfigError, validate_config
from common.privacy.release_inventory import INVENTORY, Reply, Status, declared, inventory_markdown, released_keys
from server.simulate import simulate

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[1] / "README.md"
SITES = ["hospital_a", "hospital_b", "hospital_c"]
TINY = ["model=small_cnn", "task.image_size=16", "federation.num_rounds=1"] + [
    f"federation.sites.{s}.data.{k}={v}" for s in SITES for k, v in (("num_train", 32), ("num_test", 16))
]
# Training-patient statistics that must never leave a private site.
NEVER_FROM_PRIVATE = {"num-examples", "train-loss", "update-norm"}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def recording_mod(path: Path):
    """An outermost ClientApp mod appending what every reply carries to ``path`` (one JSON line each)."""

    def mod(msg: Message, ctxt: Context, call_next) -> Message:
        reply = call_next(msg, ctxt)
        kind, keys = released_keys(str(msg.metadata.message_type), reply)
        line = {
            "site": SITES[int(ctxt.node_config["partition-id"])],
            "kind": kind.value,
            "keys": keys,
            "reason": reply.error.reason if reply.has_error() else None,
            "code": int(reply.error.code) if reply.has_error() else None,
        }
        with open(path, "a") as out:  # sites are separate processes: append one line at a time
            out.write(json.dumps(line) + "\n")
        return reply

    return mod


def bad_real_site(tmp_path: Path) -> tuple[list[str], str, str]:
    """hospital_c reads real files in which one patient is in both the train and test folders."""
    root = tmp_path / "hospital_c_files"
    write_kermany(root, xray_patients(num_train=24, num_test=8), classes=CLASSES, jpeg_quality=90)
    leaked = sorted((root / "train" / CLASSES[0]).glob("*.jpeg"))[0]
    shutil.copy(leaked, root / "test" / CLASSES[0] / leaked.name)
    overrides = [
        f"federation.sites.hospital_c.data.root={root}",
        "+federation.sites.hospital_c.data.synthesize=false",
        "+federation.sites.hospital_c.data.split=folders",
    ]
    return overrides, str(root), leaked.stem


MODES = {
    # (aggregation, strategy): (hospital_c has a bad file, hospital_b trains without DP). Flower's
    # plain FedAvg needs the same metric keys from every site, so mixing private and non-private
    # sites is a SecAgg+-only case.
    ("plain", "fedavg"): (True, False),
    ("plain", "dp_fedavg"): (False, False),
    ("plain", "dp_fedavg_adaptive"): (False, False),
    ("plain", "svt"): (False, False),  # sparse, SVT-noised updates (plain aggregation only)
    ("secaggplus", "fedavg"): (True, True),
    ("secaggplus", "dp_fedavg"): (False, False),
    # Sparse updates (values + positions, eps-svt); partial_sharing sends the same keys but eps-svt.
    ("plain", "svt"): (False, False),
}


@pytest.mark.parametrize(("aggregation", "strategy"), list(MODES))
def test_every_key_a_site_sends_is_declared(tiny_config, tmp_path, aggregation, strategy):
    extra = ["strategy.client_dp.clipped_count_stddev=10"] if strategy.endswith("adaptive") else []
    bad_site, non_private = MODES[(aggregation, strategy)]
    bad, root, patient = bad_real_site(tmp_path) if bad_site else ([], "", "")
    extra += bad + (["+federation.sites.hospital_b.privacy.enabled=false"] if non_private else [])
    log = tmp_path / "released.jsonl"
    cfg = tiny_config(*TINY, f"aggregation={aggregation}", f"strategy={strategy}", *extra)
    report = simulate(cfg, client_outer_mods=[recording_mod(log)])
    sent = [json.loads(line) for line in log.read_text().splitlines()]

    # 1. Nothing undeclared leaves any site, in any message.
    undeclared = {(m["kind"], k) for m in sent for k in m["keys"] if declared(Reply(m["kind"]), k) is None}
    assert not undeclared, f"keys sent but not in common/privacy/release_inventory.py: {sorted(undeclared)}"
    # 2. Private sites' training replies carry no training loss, no patient count, no update norm.
    train = Reply.TRAIN_SECAGG.value if aggregation == "secaggplus" else Reply.TRAIN.value
    for m in sent:
        if m["kind"] == train and (m["site"] != "hospital_b" or not non_private):
            assert not {k.split("/")[-1] for k in m["keys"]} & NEVER_FROM_PRIVATE, m
    kinds = {(m["site"], m["kind"]) for m in sent}
    assert ("hospital_a", train) in kinds and ("hospital_a", Reply.EVALUATE.value) in kinds
    # 3. The coordinator keeps no training loss.
    assert report.rows and not [k for row in report.rows for k in row if "train_loss" in k]
    assert not [k for k in MlflowClient(report.tracking_uri).get_run(report.run_id).data.metrics if "train_loss" in k]
    # 4. A non-private site says how many examples it trained on (its hospital allowed privacy=none).
    if non_private:
        assert any(k.endswith("/num-examples") for m in sent if m["site"] == "hospital_b" and m["kind"] == train
                   for k in m["keys"])
    if not bad_site:
        assert not [m for m in sent if m["kind"] == Reply.ERROR.value]
        return
    # 5. The bad site's failures reach the coordinator as site + kind only: no path, no patient id.
    errors = [m for m in sent if m["kind"] == Reply.ERROR.value]
    assert errors and {m["site"] for m in errors} == {"hospital_c"}
    for m in errors:
        assert m["reason"] == "site hospital_c: DataError" and m["code"] == 4000, m
        assert root not in m["reason"] and patient not in m["reason"] and ".jpeg" not in m["reason"]


def test_adaptive_clipping_under_secure_aggregation_is_a_clear_config_error(tiny_config):
    with pytest.raises(ConfigError, match="adaptive clipping.*cannot run with aggregation=secaggplus.*aggregation=plain"):
        validate_config(tiny_config("aggregation=secaggplus", "strategy=dp_fedavg_adaptive"))


def test_secure_aggregation_is_the_default(tiny_config):
    from common.run_config import compose_config

    assert compose_config([]).aggregation.name == "secaggplus"


def test_readme_lists_every_declared_key_with_its_status():
    text = README.read_text()
    section = re.search(r"^## What leaves a hospital\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert section, 'README has no "## What leaves a hospital" section'
    # The table is generated from the registry: `python -m common.privacy.release_inventory`.
    assert inventory_markdown() in section.group(1), "README table differs from the registry; regenerate it"
    for release in INVENTORY:
        assert f"`{release.key}`" in section.group(1)
    assert {r.status for r in INVENTORY} >= {Status.SAMPLE_DP, Status.TEST_SET, Status.PUBLIC, Status.PROTOCOL}


def test_undeclared_keys_are_caught():
    """The check itself can fail: a training loss or an update norm is not declared anywhere."""
    assert declared(Reply.TRAIN, "metrics/train-loss") is None
    assert declared(Reply.TRAIN_SECAGG, "fitres.metrics/update-norm") is None
    assert declared(Reply.TRAIN, "metrics/num-examples").status is Status.NOT_PRIVATE
    assert declared(Reply.EVALUATE, "metrics/dice.liver").status is Status.TEST_SET
    assert declared(Reply.TRAIN, "arrays/fc.weight").status is Status.SAMPLE_DP
