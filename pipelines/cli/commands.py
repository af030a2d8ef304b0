"""The handlers of the subcommands about pipelines and their data: `spec`, `step`, `pod`, `data`,
`db`, `env`, `runs`, `batch`, `labels`, `status`. Each takes the parsed arguments and returns the exit code;
what needs numpy, pandas and the like is imported when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pipelines.cli.team_commands import os_user
from pipelines.core import spec_docs
from pipelines.core.audit import AuditEvent
from pipelines.core.errors import InvalidArgument, MlcycleError
from pipelines.core.params import ENV as PARAMS_ENV
from pipelines.core.pod import pod_manifest
from pipelines.core.settings import PROJECT_DIR, load_settings, pipeline_names, spec_for
from pipelines.core.spec import FileSource, Source, SyntheticSource, json_schema, load_spec
from pipelines.core.steps import step as step_info
from pipelines.io import audit, db, mlflow_auth
from pipelines.io.clientenv import client_env
from pipelines.io.clientenv import render_env as render_client_env
from pipelines.io.runs import latest_run_id, render_run, run_steps
from pipelines.io.status import pipeline_status, render_status
from pipelines.io.storage import to_json
from pipelines.local import follow
from pipelines.steps.context import check_run_id
from pipelines.steps.runner import RESULT_PREFIX, run_step

RUN_ID_TEMPLATE = "{{ run_id }}"
"""`pod render`'s default run id: the Jinja template Airflow fills in."""


def cmd_spec_validate(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            spec = load_spec(path)
        except MlcycleError as err:
            print(err, file=sys.stderr)
            failed += 1
            continue
        problem = _source_problem(spec.source) if args.data else None
        if problem:
            print(f"{path}: {problem}", file=sys.stderr)
            failed += 1
        else:
            print(
                f"{path}: ok ({spec.name}: source {spec.source.kind}, feature service {spec.features.feature_service})"
            )
    return 2 if failed else 0


def _source_problem(source: Source) -> str | None:
    """Why a file source names no data here (its path resolved as ingest resolves it), else None."""
    if not isinstance(source, FileSource):
        return None
    from pipelines.io.sources import file_source_problem  # heavy: pandas

    return file_source_problem(source, load_settings())


def cmd_spec_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_spec_docs(args: argparse.Namespace) -> int:
    out = PROJECT_DIR / "docs" / "configuration.md"
    text = spec_docs.render(json_schema())
    if args.check:
        if not out.exists() or out.read_text() != text:
            print(f"stale: {out}: run `{spec_docs.COMMAND}` and commit it", file=sys.stderr)
            return 1
        print("the configuration reference is up to date")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


def cmd_step(args: argparse.Namespace) -> int:
    if args.as_of:  # a run parameter, as the operator passes it to every step pod
        os.environ[PARAMS_ENV] = json.dumps({**json.loads(os.environ.get(PARAMS_ENV) or "{}"), "as_of": args.as_of})
    result = run_step(args.name, args.pipeline, args.run_id, load_settings(), force=args.force, worker=args.worker)
    print(RESULT_PREFIX + to_json(result))
    return 0


def cmd_pod_render(args: argparse.Namespace) -> int:
    import yaml

    step_info(args.step)  # an unknown step is a clear error
    if args.run_id != RUN_ID_TEMPLATE:
        check_run_id(args.run_id)
    settings = load_settings()
    manifest = pod_manifest(spec_for(settings, args.pipeline), args.step, args.run_id, settings)
    print(yaml.safe_dump(manifest, sort_keys=False), end="")
    return 0


def cmd_data_generate(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from pipelines.ml.datagen import ChurnConfig, generate_churn  # heavy: numpy, pandas

    sizes = {k: getattr(args, k) for k in ("customers", "months", "covariate_drift", "concept_drift", "fault_rate")}
    try:  # the bounds of the spec's synthetic source, which generates the same data
        SyntheticSource(kind="synthetic", seed=args.seed, **sizes)
    except ValidationError as err:
        lines = [line.replace("_", "-", line.index(":")) for line in follow.validation_lines(err)]
        raise InvalidArgument("data generate: --" + "; --".join(lines)) from None
    cfg = ChurnConfig(
        customers=args.customers,
        months=args.months,
        seed=args.seed,
        covariate_drift=args.covariate_drift,
        concept_drift=args.concept_drift,
        fault_rate=args.fault_rate,
    )
    df = generate_churn(cfg)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        df.to_csv(out, index=False)
    else:
        from pipelines.io.sources import normalize_frame  # heavy: pandas

        normalize_frame(df).to_parquet(out, index=False)
    print(f"{out}: {len(df)} rows, churn rate {df['churned'].mean():.3f}")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.action == "migrate":
        applied = db.migrate(settings)
        print(f"applied {applied}" if applied else "up to date")
    elif args.action == "url":
        print(db.database_url(settings))
    elif args.action == "serving-role":  # the platform's start: the serving path's login (migration 0013)
        db.enable_serving_role(settings)
        print(f"role {db.SERVING_ROLE} can log in")
    else:
        print("stopped" if db.stop_embedded(settings) else "not running")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    settings = load_settings()
    names = pipeline_names(settings)
    pipeline = args.pipeline or (names[0] if names else None)
    if pipeline is None:
        raise InvalidArgument(f"no pipeline specs in {settings.specs_path}")
    spec_for(settings, pipeline)  # one that exists, or an error naming the known ones
    print(f'# mlcycle env for pipeline {pipeline}: eval "$(mlcycle env)" in a shell, then use the plain clients')
    login = mlflow_auth.client_credentials(settings)
    print(render_client_env(client_env(settings, db.database_url(settings), pipeline, login)))
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    settings = load_settings()
    spec_for(settings, args.pipeline)  # one that exists, or an error naming the known ones
    db.migrate(settings)  # a fresh state dir has no run tables yet
    run_id = args.run_id or latest_run_id(settings, args.pipeline)
    if run_id is None:
        print(f"no runs of {args.pipeline} yet")
        return 0
    print(render_run(args.pipeline, run_id, run_steps(settings, args.pipeline, run_id)))
    return 0


def cmd_labels_load(args: argparse.Namespace) -> int:
    from pydantic import TypeAdapter, ValidationError

    settings = load_settings()
    if args.source.startswith("s3://"):
        raw: dict[str, Any] = {"kind": "s3", "uri": args.source}
    elif args.source.lower().startswith("select"):
        raw = {"kind": "postgres", "query": args.source, "url_env": args.url_env}
    else:
        raw = {"kind": "file", "path": str(Path(args.source).resolve())}
    try:
        source = TypeAdapter(Source).validate_python(raw)
    except ValidationError as err:
        raise InvalidArgument(f"labels load {args.source}: " + "; ".join(follow.validation_lines(err))) from None
    from pipelines.io.labels import load_labels  # heavy: pandas

    loaded = load_labels(settings, spec_for(settings, args.pipeline), source)
    detail = {"rows": loaded, "source": source.kind, "via": "cli"}
    audit.record(settings, AuditEvent(args.actor or os_user(), "user", "labels_loaded", args.pipeline, detail=detail))
    print(f"{args.pipeline}: {loaded} labels loaded")
    return 0


def cmd_batch_show(args: argparse.Namespace) -> int:
    from pipelines.io.batch import batch_runs, render_batch_runs

    settings = load_settings()
    spec_for(settings, args.pipeline)  # one that exists, or an error naming the known ones
    db.migrate(settings)  # a fresh state dir has no batch tables yet
    print(render_batch_runs(args.pipeline, batch_runs(settings, args.pipeline, args.limit)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings()
    spec_for(settings, args.pipeline)  # one that exists, or an error naming the known ones
    db.migrate(settings)  # a fresh state dir has no tables yet
    print(render_status(pipeline_status(settings, args.pipeline)))
    return 0
