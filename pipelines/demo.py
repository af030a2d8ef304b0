"""`mlcycle demo`: the churn lifecycle through Airflow on the embedded profile.

Airflow's home (SQLite metadata) lives in the state directory; the DAG runs with `airflow dags
test`, each task through `PipelineStepOperator` on the local runtime, so every step is the same
`mlcycle step ...` command a pod would run. At the end it prints where the outputs are.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pipelines.settings import Settings, load_settings


def airflow_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an embedded Airflow rooted in the state directory. Pure."""
    env = dict(os.environ if base is None else base)
    home = settings.state_path / "airflow"
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(settings.project_dir / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(settings.project_dir / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "MLCYCLE_STATE_DIR": str(settings.state_path),
            "MLCYCLE_PROFILE": settings.profile,
        }
    )
    return env


def _airflow(args: list[str], env: dict[str, str], quiet: bool = False) -> None:
    exe = str(Path(sys.executable).parent / "airflow")
    out = subprocess.DEVNULL if quiet else None
    subprocess.run([exe, *args], env=env, check=True, stdout=out)


def run_demo(pipeline: str = "churn") -> int:
    settings = load_settings()
    env = airflow_env(settings)
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"==> Airflow metadata in {env['AIRFLOW_HOME']}", flush=True)
    _airflow(["db", "migrate"], env, quiet=True)
    from serving import embedded

    print(f"==> Ray Serve on http://{settings.serve_host}:{settings.serve_port} (a local Ray head)", flush=True)
    key = embedded.start(settings)
    print(f"==> running {pipeline}_lifecycle through Airflow (runtime local)", flush=True)
    try:
        _airflow(["dags", "test", f"{pipeline}_lifecycle"], env)
    except subprocess.CalledProcessError:
        print("mlcycle demo: the DAG run failed; see the task output above", file=sys.stderr)
        return 1
    print(f"\n==> done in {time.monotonic() - started:.0f}s. Outputs of the run:")
    from pipelines.cli import main
    from pipelines.tracking import mlflow_uri

    code = main(["runs", "show", "--pipeline", pipeline])
    print()
    main(["status", pipeline])
    mlflow = Path(sys.executable).parent / "mlflow"
    print(
        f"\n==> the MLflow UI on the demo's database (runs, trials, the registry and its aliases):\n"
        f"    {mlflow} ui --host 127.0.0.1 --port 5000 --backend-store-uri '{mlflow_uri(settings)}'"
    )
    from serving.deploy import endpoint

    url = endpoint(settings, pipeline)
    body = '{"instances": [{"entity_id": 42}]}'
    print(f"\n==> the champion on Ray Serve (the key is in {settings.state_path / 'serving-api-key'}):")
    print(f"    curl -s -H 'x-api-key: {key}' -H 'content-type: application/json' -d '{body}' {url}/predict")
    print(f"    curl -s {url}/      # versions, weights, canary state")
    print("    `make stop` stops Ray and the database")
    return code
