"""mlcycle installed into an Airflow of one's own: a fresh virtual environment with Apache Airflow 3
and the built wheel only (no checkout on its path, no `MLCYCLE_*` or AWS variable in its
environment). Airflow lists mlcycle as a provider with the `mlcycle` connection type; a DAG file
written as a user would (the operator, the DAG factory) parses; `airflow dags test` runs a step
against the platform's database and object store, which it knows of only through the connection
`mlcycle_default` (Airflow's environment-variable secrets backend, as any other backend).

Building the environment installs the whole stack from pip's configured sources (minutes): the
`provider_install` marker lets a quick run leave it out (`-m "not provider_install"`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from pipelines.core.settings import Settings
from pipelines.io import db
from pipelines.io.storage import open_storage, read_json
from tests.conftest import churn_spec_dict, write_spec
from tests.services import S3Server

pytestmark = [pytest.mark.integration, pytest.mark.provider_install]

PROJECT = Path(__file__).resolve().parents[2]
AIRFLOW_VERSION = metadata.version("apache-airflow")  # the Airflow of requirements.txt, as here
WHEEL_SOURCES = ("pyproject.toml", "README.md", "requirements.txt", "pipelines", "operators", "feature_repo", "serving")


@dataclass(frozen=True)
class Installed:
    venv: Path
    seconds: float


@pytest.fixture(scope="session")
def provider_venv(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel of this checkout and Airflow in a virtual environment of their own."""
    root = tmp_path_factory.mktemp("provider")
    started = time.monotonic()
    # built from a copy of what the wheel takes, so no stale `build/` of the checkout gets in
    src, dist = root / "src", root / "dist"
    src.mkdir()
    for name in WHEEL_SOURCES:
        if (PROJECT / name).is_dir():
            shutil.copytree(PROJECT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(PROJECT / name, src / name)
    pip_wheel = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(dist),
        str(src),
    ]
    subprocess.run(pip_wheel, check=True, timeout=300)
    (wheel,) = dist.glob("mlcycle-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    # pip as this machine configures it, but nothing of the checkout: on PYTHONPATH its
    # mlcycle.egg-info would read as "mlcycle already installed"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("MLCYCLE_", "AWS_"))}
    # the versions the project is tested with as constraints, as Airflow's own install asks for its
    # constraints file: pip's resolver then backtracks through no other versions (it fetched 19
    # of fastapi's, 12 of cadwyn's and 8 of pandas' without; 20 % of the install's time)
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    constraints = root / "constraints.txt"
    constraints.write_text("".join(f"{line}\n" for line in frozen if not line.lower().startswith("mlcycle")))
    # no byte-compiling of the whole stack at install: Python compiles what it imports
    install = [
        str(venv / "bin" / "pip"),
        "install",
        "-q",
        "--no-compile",
        "-c",
        str(constraints),
        f"apache-airflow=={AIRFLOW_VERSION}",
        str(wheel),
    ]
    with (root / "pip.log").open("w") as log:  # pip's warnings about the machine's indexes go there
        done = subprocess.run(install, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=1800, check=False)
    assert done.returncode == 0, (root / "pip.log").read_text()[-4000:]
    return Installed(venv, time.monotonic() - started)


def _clean_env(venv: Path, home: Path, **extra: str) -> dict[str, str]:
    """An Airflow's environment: its home and DAGs folder, nothing of the checkout or the platform."""
    return {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        **extra,
    }


def _airflow(env: dict[str, str], *args: str, timeout: int = 600) -> str:
    out = subprocess.run(
        ["airflow", *args], env=env, cwd=env["HOME"], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert out.returncode == 0, f"airflow {' '.join(args)}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out.stdout


def _json(out: str) -> list[dict[str, Any]]:
    """The JSON an `airflow ... -o json` printed (its last line; log lines may come before it)."""
    return json.loads(out.strip().splitlines()[-1]) if out.strip() else []


def _connection(platform: Settings, s3: S3Server, pipelines: Path, prefix: str) -> dict[str, object]:
    """The `mlcycle` connection of the platform: its database (the embedded PostgreSQL's socket
    directory as the host), its object store with keys, the pipelines folder, runtime `local`."""
    url = urlsplit(db.database_url(platform))
    return {
        "conn_type": "mlcycle",
        "host": parse_qs(url.query)["host"][0],
        "login": url.username,
        "schema": url.path.lstrip("/"),
        "extra": {
            "profile": "cluster",
            "runtime": "local",
            "artifact_root": f"s3://{s3.bucket}/{prefix}",
            "s3_endpoint_url": s3.endpoint,
            "aws_access_key_id": s3.access_key,
            "aws_secret_access_key": s3.secret_key,
            "pipelines_dir": str(pipelines),
        },
    }


DAG_FILE = '''\
"""A team's own DAG file: mlcycle's operator beside their tasks, and mlcycle's DAG factory."""
from airflow.sdk import DAG, task

from operators import PipelineStepOperator, drift_dag, lifecycle_dag
from pipelines.core.spec import load_spec

with DAG(dag_id="team_dag", schedule=None, catchup=False, tags=["team"]) as dag:

    @task
    def before() -> str:
        return "the team's own task"

    before() >> PipelineStepOperator(task_id="ingest", pipeline="churn", step="ingest")

spec = load_spec({spec!r})
churn = lifecycle_dag(spec, spec.lifecycle_steps())
drift = drift_dag(spec)
'''


@pytest.mark.timeout(2400)  # the environment's install is part of this test's setup
def test_airflow_with_only_the_wheel_lists_the_provider_and_runs_a_step_through_the_connection(
    provider_venv: Installed, platform: Settings, s3: S3Server, tmp_path: Path
) -> None:
    print(f"\nthe provider's virtual environment took {provider_venv.seconds:.0f} s to build")
    home = tmp_path / "home"
    (home / "dags").mkdir(parents=True)
    pipelines = tmp_path / "pipelines"
    source = {"kind": "synthetic", "customers": 300, "months": 6, "seed": 3}
    contract = {**churn_spec_dict()["contract"], "min_rows": 100}
    spec = write_spec(pipelines, "churn", source=source, contract=contract)
    (home / "dags" / "team.py").write_text(DAG_FILE.format(spec=str(spec)))
    conn = _connection(platform, s3, pipelines, "provider-test")
    env = _clean_env(provider_venv.venv, home, AIRFLOW_CONN_MLCYCLE_DEFAULT=json.dumps(conn))
    assert not any(k.startswith(("MLCYCLE_", "AWS_", "PYTHON")) for k in env)

    providers = _json(_airflow(env, "providers", "list", "-o", "json"))
    assert {"package_name": "mlcycle", "version": metadata.version("mlcycle")}.items() <= next(
        p for p in providers if p["package_name"] == "mlcycle"
    ).items()
    hooks = _json(_airflow(env, "providers", "hooks", "-o", "json"))
    assert {"connection_type": "mlcycle", "class": "operators.hook.MlcycleHook", "package_name": "mlcycle"}.items() <= (
        next(h for h in hooks if h["connection_type"] == "mlcycle").items()
    )
    widgets = _json(_airflow(env, "providers", "widgets", "-o", "json"))
    assert "extra__mlcycle__artifact_root" in {w["connection_parameter_name"] for w in widgets}

    # the DAG file parses in that environment: the operator and the factory come from the wheel
    _airflow(env, "db", "migrate")
    assert _json(_airflow(env, "dags", "list-import-errors", "--local", "-o", "json")) == []
    dag_ids = {d["dag_id"] for d in _json(_airflow(env, "dags", "list", "--local", "-o", "json"))}
    assert dag_ids >= {"team_dag", "churn_lifecycle", "churn_drift"}
    where = subprocess.run(
        [str(provider_venv.venv / "bin" / "python"), "-c", "import operators, pipelines; print(operators.__file__)"],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert where.stdout.startswith(str(provider_venv.venv))  # the wheel's, not the checkout's

    out = _airflow(env, "dags", "test", "team_dag")
    assert s3.secret_key not in out  # Airflow masks the connection's secret in the task's log

    # the step wrote where the connection says: the platform's database and its object store
    with db.connect(platform) as c:
        rows = c.execute(
            "SELECT run_id, status FROM step_runs WHERE pipeline = 'churn' AND step = 'ingest' ORDER BY started_at"
        ).fetchall()
    assert rows and rows[-1][1] == "succeeded", rows
    stored = Settings(
        profile="cluster",
        database_url=db.database_url(platform),
        artifact_root=f"s3://{s3.bucket}/provider-test",
        s3_endpoint_url=s3.endpoint,
    )
    manifest = read_json(open_storage(stored), f"churn/{rows[-1][0]}/ingest/manifest.json")
    assert manifest["rows"] > 100
