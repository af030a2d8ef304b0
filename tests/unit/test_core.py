"""pipelines.core: the table of steps and the OS helpers."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.core.errors import InvalidArgument
from pipelines.core.spec import STEP_NAMES as SPEC_STEP_NAMES
from pipelines.core.spec import parse_spec
from pipelines.core.steps import BY_NAME, LIFECYCLE, STEP_NAMES, STEPS, step
from pipelines.core.system import executable, secret_file, stop_processes, write_private
from tests.specs import churn_spec_dict


def test_the_table_of_steps_is_the_lifecycle_in_order() -> None:
    assert STEP_NAMES == (
        "ingest",
        "validate",
        "features",
        "trials",
        "train",
        "evaluate",
        "promote",
        "embed",
        "canary",
        "drift",
        "retention",
        "batch_pin",
        "batch",
        "batch_publish",
    )
    # drift has a DAG of its own; trials fans out before train only where a spec asks for workers;
    # embed is in the lifecycle of a spec with `embeddings` only
    assert LIFECYCLE == ("ingest", "validate", "features", "train", "evaluate", "promote", "embed", "canary")
    with_vectors = parse_spec(churn_spec_dict())
    assert with_vectors.embeddings is not None and with_vectors.lifecycle_steps() == list(LIFECYCLE)
    without = parse_spec({k: v for k, v in churn_spec_dict().items() if k != "embeddings"})
    assert "embed" not in without.lifecycle_steps() and without.lifecycle_steps()[-1] == "canary"
    assert SPEC_STEP_NAMES is STEP_NAMES  # the spec validates against the same table
    assert all(s.module == f"pipelines.steps.{s.name}" for s in STEPS)
    assert {s.name for s in STEPS if s.report} == {"validate", "evaluate", "canary", "drift"}


def test_every_step_module_has_a_run_function() -> None:
    import importlib

    for s in STEPS:
        assert callable(importlib.import_module(s.module).run), s.name


def test_an_unknown_step_is_a_clear_error() -> None:
    assert step("train") is BY_NAME["train"]
    with pytest.raises(InvalidArgument, match=r"unknown step 'trian'; steps are \['ingest'"):
        step("trian")


def test_secret_file_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "key"
    made = []
    assert secret_file(path, lambda: made.append(1) or "s3cret") == "s3cret"
    assert secret_file(path, lambda: made.append(1) or "other") == "s3cret"
    assert made == [1]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_write_private_replaces_the_file_mode_600(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, "A=1\n")
    assert path.read_text() == "A=1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not (tmp_path / ".env.tmp").exists()


def test_executable_prefers_this_environment() -> None:
    assert Path(executable("mlcycle")).parent == Path(sys.executable).parent
    with pytest.raises(FileNotFoundError, match="surely-not-a-command"):
        executable("surely-not-a-command")


def test_stop_processes_kills_what_ignores_sigterm() -> None:
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline()  # the handler is set
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stop_processes([stubborn, polite], grace_s=0.5)
    assert polite.returncode == -15
    assert stubborn.returncode == -9


def test_libraries_info_lines_are_dropped_their_warnings_kept() -> None:
    """Great Expectations' ~200 INFO lines buried validate's verdict; its warnings still show."""
    import logging

    from pipelines.cli import quiet_filter

    def record(name: str, level: int) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, "m", None, None)

    assert not quiet_filter(record("great_expectations.data_context.types.base", logging.INFO))
    assert quiet_filter(record("great_expectations.core", logging.WARNING))
    assert quiet_filter(record("pipelines.steps.validate", logging.INFO))
