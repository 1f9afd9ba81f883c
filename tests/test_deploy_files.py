"""deploy/ without Docker: compose and Dockerfiles parse, and every command, flag, path and pin exists."""

from __future__ import annotations

import re
import sys
import zipfile
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_lint import (
    SUBCOMMANDS,
    dockerfile_instructions,
    exec_form,
    help_flags,
    shell_commands,
    unknown_flags,
    with_env_defaults,
)

from common.federation_config import site_view
from common.run_config import apply_site_config, compose_config

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
SITES = ["hospital_a", "hospital_b", "hospital_c"]


def _compose(name: str = "compose.yaml") -> dict:
    return yaml.safe_load(with_env_defaults((DEPLOY / name).read_text()))


def _dockerfile(service: dict) -> list[tuple[str, str]]:
    return dockerfile_instructions((REPO / service["build"]["dockerfile"]).read_text())


def _argv(service: dict) -> list[str]:
    """The container's command line: the image's ENTRYPOINT plus the compose command."""
    entrypoint = [exec_form(a) for i, a in _dockerfile(service) if i == "ENTRYPOINT"][-1]
    return [*entrypoint, *service.get("command", [])]


def _mounts(service: dict) -> dict[str, str]:
    """Container path -> source (bind mounts relative to deploy/, or a volume name)."""
    out = {}
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        out[target] = source
    return out


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """What `deploy/gen-certs.sh` produces, to check the compose file mounts real names."""
    out = tmp_path_factory.mktemp("certs")
    subprocess.run(["bash", str(DEPLOY / "gen-certs.sh"), "-o", str(out), "coordinator.example.org", *SITES],
                   check=True, capture_output=True, timeout=60)
    return out


def test_checker_catches_misspelled_flags_and_unknown_commands():
    assert unknown_flags(["flower-supernode", "--root-certificates", "ca.crt", "--superlink=x:1"]) == []
    assert unknown_flags(["flower-supernode", "--root-certificate", "ca.crt"]) == ["--root-certificate"]
    assert unknown_flags(["flwr", "supernode", "register", "k.pub", "--nme", "a"]) == ["--nme"]
    assert "--enable-supernode-auth" in help_flags(("flower-superlink",))
    with pytest.raises(ValueError, match="unknown command 'flwr superlink'"):
        help_flags(("flwr", "superlink"))


def test_dockerfile_parser_joins_continuations_and_drops_comments():
    text = 'FROM x:1\n# c\nRUN a \\\n    # inner\n    && b\nENTRYPOINT ["t"]\n'
    assert dockerfile_instructions(text) == [("FROM", "x:1"), ("RUN", "a && b"), ("ENTRYPOINT", '["t"]')]
    with pytest.raises(ValueError, match="continued"):
        dockerfile_instructions("RUN a \\\n")


def test_compose_has_the_coordinator_three_hospitals_and_tracking():
    compose = _compose()
    assert set(compose["services"]) == {"superlink", "mlflow", "postgres", *SITES}
    for name, service in compose["services"].items():
        assert service.get("restart") == "unless-stopped", name
        has_check = "healthcheck" in service or any(i == "HEALTHCHECK" for i, _ in _dockerfile(service))
        assert has_check, f"{name} has no healthcheck"
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:\d[\w.-]*", image), f"{name}: image {image!r} is not pinned to a version"
    # MLflow and PostgreSQL sit on an internal network the hospitals are not on.
    assert compose["networks"]["tracking"]["internal"] is True
    for site in SITES:
        assert compose["services"][site]["networks"] == ["federation"]
    assert compose["services"]["superlink"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_every_flag_in_compose_exists_in_the_installed_tools():
    for name, service in _compose()["services"].items():
        if "build" not in service:
            continue
        argv = _argv(service)
        if argv[0] == "mlflow-entrypoint.sh":  # it runs `mlflow server <args>`
            argv = ["mlflow", "server", *argv[1:]]
        assert argv[0] in SUBCOMMANDS, f"{name}: unexpected entrypoint {argv[0]}"
        assert unknown_flags(argv) == [], f"{name}: {argv}"


def test_security_is_on_for_every_link():
    services = _compose()["services"]
    superlink = _argv(services["superlink"])
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth", "--database"):
        assert any(a.split("=")[0] == flag for a in superlink), flag
    for site in SITES:
        argv = _argv(services[site])
        assert any(a.startswith("--root-certificates=") for a in argv)
        assert any(a.startswith("--auth-supernode-private-key=") for a in argv)
        assert f'site="{site}"' in next(a for a in argv if a.startswith("--node-config="))
    for argv in (superlink, *(_argv(services[s]) for s in SITES)):
        assert "--insecure" not in argv


def test_container_paths_in_commands_are_mounted(certs):
    compose = _compose()
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        mounts = _mounts(service)
        for path in re.findall(r'(?<=[="])(/[\w./-]+)', " ".join(service.get("command", []))):
            mounted = any(path == t or path.startswith(t.rstrip("/") + "/") for t in mounts)
            assert mounted, f"{name}: {path} is used but not mounted"
        for target, source in mounts.items():
            if source.startswith("./certs/"):
                # Generated by gen-certs.sh, under these exact names.
                assert (certs / source.removeprefix("./certs/")).is_file(), f"{name}: gen-certs.sh makes no {source}"
            elif source.startswith("."):
                assert (DEPLOY / source).is_file(), f"{name}: {source} does not exist"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"


def test_dockerfiles_copy_existing_paths_and_pin_versions():
    pins = dict(
        line.split("==") for line in (REPO / "requirements.txt").read_text().splitlines() if "==" in line
    )
    for dockerfile in sorted(DEPLOY.glob("*.Dockerfile")):
        instructions = dockerfile_instructions(dockerfile.read_text())
        (base,) = [a for i, a in instructions if i == "FROM"]
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), f"{dockerfile.name}: unpinned base {base}"
        for instruction, args in instructions:
            if instruction == "COPY":
                *sources, _ = args.split()
                for source in sources:
                    assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
            if instruction == "RUN":
                for package, version in re.findall(r"([\w-]+)==([\w.]+)", args):
                    if package in pins:
                        assert pins[package] == version, f"{dockerfile.name}: {package}=={version}, requirements.txt has {pins[package]}"
        if dockerfile.name != "mlflow.Dockerfile":
            assert ("RUN", "pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt") in instructions
        assert (dockerfile.parent / f"{dockerfile.name}.dockerignore").is_file(), "keys must stay out of the context"
        assert "USER" in [i for i, _ in instructions], f"{dockerfile.name} runs as root"


def test_gpu_overlay_reserves_one_gpu_per_hospital():
    services = _compose("compose.gpu.yaml")["services"]
    assert set(services) == set(SITES)
    for site in SITES:
        (device,) = services[site]["deploy"]["resources"]["reservations"]["devices"]
        assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}


@pytest.mark.parametrize("site", SITES)
def test_example_site_files_apply_to_their_site(site):
    merged = apply_site_config(compose_config(), site, site_file=DEPLOY / "sites" / f"{site}.yaml")
    view = site_view(merged, site)
    assert view.privacy.target_epsilon <= 8.0


@pytest.mark.parametrize("doc", ["README.md", "deploy/README.md"])
def test_documented_commands_use_existing_flags_and_paths(doc):
    text = (REPO / doc).read_text()
    checked = 0
    for argv in shell_commands(text):
        while argv and re.fullmatch(r"\w+=\S*", argv[0]):  # VAR=value prefixes
            argv = argv[1:]
        if argv and argv[0] == "sudo":
            argv = argv[1:]
        if not argv:
            continue
        tool = Path(argv[0]).name
        if tool in SUBCOMMANDS:
            assert unknown_flags([tool, *argv[1:]]) == [], f"{doc}: {' '.join(argv)}"
            checked += 1
        if tool in ("gen-certs.sh", "gen-node-key.sh"):
            assert (DEPLOY / tool).is_file()
    if doc == "README.md":
        assert checked >= 8, "the deployment guide should show the flwr/flower commands"


def test_scripts_are_valid_shell():
    for script in sorted(DEPLOY.glob("*.sh")):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


def test_submitted_app_bundle_is_small_and_holds_no_secrets(tmp_path, certs):
    # `flwr run .` ships this bundle to the coordinator and every hospital.
    env = {"PATH": str(Path(sys.executable).parent), "FLWR_HOME": str(tmp_path / "home"), "FLWR_TELEMETRY_ENABLED": "0"}
    subprocess.run([str(Path(sys.executable).parent / "flwr"), "build", "--app", str(REPO)],
                   cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120)
    (fab,) = tmp_path.glob("*.fab")
    names = zipfile.ZipFile(fab).namelist()
    assert fab.stat().st_size < 5 * 2**20
    assert {"conf/config.yaml", "common/run_config.py", "client/client_app.py", "server/server_app.py"} <= set(names)
    assert not [n for n in names if n.startswith((".venv/", "outputs/", "mlruns/", "deploy/certs/", "deploy/secrets/"))]
    assert not [n for n in names if n.endswith((".key", ".crt", ".pub", ".db"))]
