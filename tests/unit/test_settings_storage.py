from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.core.errors import InvalidArgument, SettingsError
from pipelines.core.settings import Settings, load_settings
from pipelines.io.db import available_migrations, pending_migrations, sqlalchemy_url
from pipelines.io.storage import LocalStorage, S3Storage, open_storage, parse_s3_uri, read_json, run_key, write_json
from pipelines.steps.context import check_run_id


def test_embedded_is_the_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLCYCLE_PROFILE", raising=False)
    monkeypatch.setenv("MLCYCLE_STATE_DIR", str(tmp_path))
    s = load_settings()
    assert s.profile == "embedded"
    assert s.effective_runtime == "local"
    assert s.artifact_uri == str(tmp_path / "artifacts")
    assert isinstance(open_storage(s), LocalStorage)
    assert s.pod_env() == {"MLCYCLE_PROFILE": "embedded", "MLCYCLE_STATE_DIR": str(tmp_path)}


def test_relative_state_dir_is_under_the_project() -> None:
    s = Settings(state_dir=Path(".mlcycle"))
    assert s.state_path == s.project_dir / ".mlcycle"


def test_cluster_profile_needs_its_services(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCYCLE_PROFILE", "cluster")
    monkeypatch.delenv("MLCYCLE_DATABASE_URL", raising=False)
    monkeypatch.delenv("MLCYCLE_ARTIFACT_ROOT", raising=False)
    with pytest.raises(SettingsError, match="MLCYCLE_DATABASE_URL, MLCYCLE_ARTIFACT_ROOT"):
        load_settings()
    monkeypatch.setenv("MLCYCLE_DATABASE_URL", "postgresql://u:p@db/x")
    monkeypatch.setenv("MLCYCLE_ARTIFACT_ROOT", "s3://mlcycle-artifacts/runs")
    s = load_settings()
    assert s.effective_runtime == "kubernetes"
    storage = open_storage(s)
    assert isinstance(storage, S3Storage)
    assert storage.uri("a/b") == "s3://mlcycle-artifacts/runs/a/b"
    monkeypatch.setenv("MLCYCLE_RUNTIME", "podman")
    with pytest.raises(SettingsError, match="runtime"):
        load_settings()


def test_unsupported_artifact_scheme() -> None:
    with pytest.raises(SettingsError, match="unsupported scheme"):
        open_storage(Settings(artifact_root="gs://bucket/x"))


def test_local_storage_writes_atomically(tmp_path: Path) -> None:
    st = LocalStorage(tmp_path)
    key = run_key("churn", "r1", "ingest", "manifest.json")
    assert not st.exists(key)
    write_json(st, key, {"b": 1, "a": [1, 2]})
    assert read_json(st, key) == {"a": [1, 2], "b": 1}
    assert st.list("churn") == [key]
    assert not list((tmp_path / "churn/r1/ingest").glob("*.tmp"))
    for bad in ("../x", "/abs", "a/../../b", ""):
        with pytest.raises(ValueError, match="invalid storage key"):
            st.write_bytes(bad, b"x")


def test_local_storage_streams_a_file_and_reads_its_own_path(tmp_path: Path) -> None:
    from pipelines.io.storage import local_file, upload_file

    st = LocalStorage(tmp_path / "store")
    src = tmp_path / "part.bin"
    src.write_bytes(b"x" * (3 << 20))
    assert upload_file(st, "p/r/batch/part-0.bin", src) == str(tmp_path / "store/p/r/batch/part-0.bin")
    with local_file(st, "p/r/batch/part-0.bin") as path:
        assert path == tmp_path / "store/p/r/batch/part-0.bin" and path.read_bytes() == src.read_bytes()
    assert path.exists()  # the object's own file, not a copy that is removed
    assert [p.name for p in (tmp_path / "store/p/r/batch").iterdir()] == ["part-0.bin"]  # no temporary left


def test_local_storage_failed_write_leaves_nothing(tmp_path: Path) -> None:
    st = LocalStorage(tmp_path)
    st.write_bytes("a/data.bin", b"old")

    with pytest.raises(TypeError):
        st.write_bytes("a/data.bin", object())  # type: ignore[arg-type]
    assert st.read_bytes("a/data.bin") == b"old"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["data.bin"]


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://bucket/some/key") == ("bucket", "some/key")
    with pytest.raises(ValueError, match="at least 3"):
        parse_s3_uri("s3://ab/key")
    with pytest.raises(ValueError, match="not an s3"):
        parse_s3_uri("http://x/y")


def test_run_ids() -> None:
    assert check_run_id("manual__2026-11-25T01:02:59.788816+00:00")
    assert check_run_id("scheduled__2026-11-25T00:00:00+00:00")
    for bad in ("", "../etc", "a b", "x/y", "-x"):
        with pytest.raises(InvalidArgument):
            check_run_id(bad)


def test_migrations_order(tmp_path: Path) -> None:
    assert pending_migrations(["0002", "0001", "0003"], {"0001"}) == ["0002", "0003"]
    (tmp_path / "0001_a.sql").write_text("")
    (tmp_path / "0002_b.sql").write_text("")
    assert list(available_migrations(tmp_path)) == ["0001", "0002"]
    (tmp_path / "0002_c.sql").write_text("")
    with pytest.raises(ValueError, match="duplicate migration version 0002"):
        available_migrations(tmp_path)
    (tmp_path / "0002_c.sql").unlink()
    (tmp_path / "bad name.sql").write_text("")
    with pytest.raises(ValueError, match="named NNNN_name.sql"):
        available_migrations(tmp_path)


def test_sqlalchemy_url() -> None:
    assert sqlalchemy_url("postgresql://u:p@h/d") == "postgresql+psycopg://u:p@h/d"
    assert sqlalchemy_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert sqlalchemy_url("postgresql+psycopg2://u@h/d") == "postgresql+psycopg://u@h/d"


def test_code_version_reads_the_commit_an_image_build_stamped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pipelines.io.tracking import code_version

    monkeypatch.delenv("MLCYCLE_GIT_COMMIT", raising=False)
    settings = Settings(project_dir=tmp_path)
    assert code_version(settings) == "unknown"  # no git checkout, no stamp
    (tmp_path / "GIT_COMMIT").write_text("abc123\n")
    assert code_version(settings) == "abc123"
    monkeypatch.setenv("MLCYCLE_GIT_COMMIT", "def456")
    assert code_version(settings) == "def456"


def test_a_steps_outputs_hold_no_number_json_lacks() -> None:
    """NaN and infinities (an AUC on labels of one class, numpy's too) become null: jsonb and XCom
    refuse them, and a step's outcome must be recordable."""
    import json

    import numpy as np

    from pipelines.io.storage import finite_json

    outputs = {
        "ab": {"value": float("nan"), "labelled": 3, "interval": [float("-inf"), 0.5]},
        "scores": np.array([0.25, np.nan]),
        "auc": np.float32("nan"),
        "p": np.float64(0.5),
        "name": "nan",
        "n": np.int64(4),
    }
    safe = finite_json(outputs)
    assert safe == {
        "ab": {"value": None, "labelled": 3, "interval": [None, 0.5]},
        "scores": [0.25, None],
        "auc": None,
        "p": 0.5,
        "name": "nan",
        "n": 4,
    }
    json.dumps(safe, allow_nan=False)  # raises on any NaN left
