"""The Compose stack's `.env`: secrets made once, kept, private; a missing one named."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from pipelines.core.errors import SettingsError
from pipelines.local import stack

ROOT = Path(__file__).resolve().parents[2]


def test_parse_and_render_round_trip() -> None:
    values = {"B": "2", "A": "x=y", "C": ""}
    assert stack.parse_env(stack.render_env(values)) == values
    assert stack.parse_env("# c\n\nK = v \nnot a pair\n") == {"K": "v"}


def test_complete_env_makes_every_secret_and_keeps_what_is_there() -> None:
    first = stack.complete_env({}, 999, "mlcycle")
    assert stack.missing_keys(first) == []
    assert first["DOCKER_GID"] == "999" and first["COMPOSE_PROJECT_NAME"] == "mlcycle"
    second = stack.complete_env({**first, "REDIS_PASSWORD": ""}, 123, "other", {"AIRFLOW_PORT": 18080})
    kept = {k: v for k, v in first.items() if k != "REDIS_PASSWORD"}
    assert {k: v for k, v in second.items() if k != "REDIS_PASSWORD"} == {**kept, "AIRFLOW_PORT": "18080"}
    assert second["REDIS_PASSWORD"] not in ("", first["REDIS_PASSWORD"])  # an empty one is made anew
    # no two secrets alike, none a well-known default
    secrets = [first[k] for k in stack.SECRETS]
    assert len(set(secrets)) == len(secrets)
    assert all(len(s) >= 16 for s in secrets)


def test_the_fernet_key_is_one_airflow_accepts() -> None:
    from cryptography.fernet import Fernet

    key = stack.complete_env({}, 0, "p")["AIRFLOW_FERNET_KEY"]
    assert Fernet(key.encode()).decrypt(Fernet(key.encode()).encrypt(b"x")) == b"x"


@pytest.mark.parametrize(("name", "expected"), [("mlcycle", "mlcycle"), ("ML-Cycle_test", "mlcycletest")])
def test_project_names_survive_both_compose_versions(name: str, expected: str) -> None:
    assert stack.compose_project(name) == expected


def test_a_project_name_without_letters_is_refused() -> None:
    with pytest.raises(SettingsError, match="no letters"):
        stack.compose_project("--")


def test_write_env_is_private_and_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "docker_gid", lambda: 994)
    path = tmp_path / ".env"
    first = stack.write_env(path, "demo")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stack.write_env(path, "demo") == first == stack.read_env(path)
    ports = stack.write_env(tmp_path / "t.env", "t", free_ports=True)
    assert all(1024 < int(ports[k]) < 65536 for k in stack.PORTS)


def test_read_env_refuses_a_shared_or_incomplete_file(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    with pytest.raises(SettingsError, match="make stack-env"):
        stack.read_env(path)
    path.write_text(stack.render_env(stack.complete_env({}, 1, "p")))
    os.chmod(path, 0o644)
    with pytest.raises(SettingsError, match="readable by others"):
        stack.read_env(path)
    os.chmod(path, 0o600)
    values = stack.parse_env(path.read_text())
    del values["RAY_AUTH_TOKEN"]
    values["POSTGRES_PASSWORD"] = ""
    path.write_text(stack.render_env(values))
    with pytest.raises(SettingsError, match="POSTGRES_PASSWORD, RAY_AUTH_TOKEN"):
        stack.read_env(path)


ONE_SHOT = ("airflow-init", "serving-role")  # run once at the start; what needs them waits for their exit


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_compose_publishes_on_loopback_only_and_checks_every_service() -> None:
    services = _compose()["services"]
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
        if name not in ONE_SHOT:
            assert "healthcheck" in svc, name


def test_compose_secrets_have_no_default() -> None:
    text = (ROOT / "docker-compose.yaml").read_text()
    for key in stack.SECRETS:
        uses = [line for line in text.splitlines() if "${" + key in line]
        assert uses, key
        for line in uses:
            # `${KEY:?message}` stops Compose when KEY is unset; `${KEY:-x}` or `${KEY}` would not
            assert "${" + key + ":?" in line, line


def test_compose_waits_for_what_each_service_needs() -> None:
    services = _compose()["services"]
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services
            expected = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert cond == {"condition": expected}, (name, dep)
    assert services["airflow-scheduler"]["depends_on"]["airflow-apiserver"] == {"condition": "service_healthy"}
    assert set(services["airflow-init"]["depends_on"]) == {"postgres"}


def test_compose_stops_postgres_with_its_fast_shutdown() -> None:
    """SIGTERM is PostgreSQL's smart shutdown, which waits for Airflow's pooled connections: Docker
    killed it after 10 s and every start recovered from a crash."""
    postgres = _compose()["services"]["postgres"]
    assert postgres["stop_signal"] == "SIGINT"
    assert postgres["stop_grace_period"] == "30s"


def test_compose_services_cannot_gain_privileges() -> None:
    """Every image runs as uid 10001 (the Dockerfile's USER); no service may gain privileges
    through a setuid binary."""
    for name, svc in _compose()["services"].items():
        assert "no-new-privileges:true" in svc.get("security_opt", []), name
        assert not svc.get("privileged"), name
        assert svc.get("user") in (None, "10001:10001"), name
    dockerfile = (ROOT / "Dockerfile").read_text()
    for target in ("step", "airflow", "serving", "services"):
        stage = dockerfile.split(f"AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        assert "\nUSER 10001:10001\n" in stage, target
