"""`ingest` from every kind of source, and idempotent re-runs, on real services."""

from __future__ import annotations

import io
from pathlib import Path

import boto3
import pandas as pd
import pytest

from pipelines.core.errors import SourceError
from pipelines.core.settings import Settings
from pipelines.io import db
from pipelines.io.storage import open_storage, read_parquet
from pipelines.steps.ingest import content_hash
from tests.integration.helpers import run, small_spec
from tests.services import S3Server, free_port_pairs

pytestmark = pytest.mark.integration


def _snapshot(settings: Settings, run_id: str) -> pd.DataFrame:
    return read_parquet(open_storage(settings), f"churn/{run_id}/ingest/snapshot.parquet")


def test_csv_and_parquet_files(workspace: Settings, churn_df: pd.DataFrame, tmp_path: Path) -> None:
    churn_df.to_csv(tmp_path / "churn.csv", index=False)
    churn_df.to_parquet(tmp_path / "churn.parquet", index=False)
    small_spec(workspace, {"kind": "file", "path": str(tmp_path / "churn.parquet")})
    m = run(workspace, "ingest", "file-pq")
    assert m["rows"] == len(churn_df)
    assert m["content_hash"] == content_hash(churn_df)
    pd.testing.assert_frame_equal(_snapshot(workspace, "file-pq"), churn_df)
    small_spec(workspace, {"kind": "file", "path": str(tmp_path / "churn.csv")})
    m = run(workspace, "ingest", "file-csv")
    assert m["rows"] == len(churn_df)
    assert m["source"] == {
        "kind": "file",
        "path": str(tmp_path / "churn.csv"),
        "format": None,
        "delimiter": ",",
        "lookback_days": None,
        "feedback": False,
        "allowed_uris": [],
    }


def test_s3_object(workspace: Settings, s3: S3Server, churn_df: pd.DataFrame) -> None:
    buf = io.BytesIO()
    churn_df.to_parquet(buf, index=False)
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    client.put_object(Bucket=s3.bucket, Key="sources/churn.parquet", Body=buf.getvalue())
    settings = workspace.model_copy(update={"s3_endpoint_url": s3.endpoint})
    small_spec(settings, {"kind": "s3", "uri": f"s3://{s3.bucket}/sources/churn.parquet"})
    m = run(settings, "ingest", "s3-1")
    assert m["content_hash"] == content_hash(churn_df)
    small_spec(settings, {"kind": "s3", "uri": f"s3://{s3.bucket}/sources/missing.parquet"})
    with pytest.raises(SourceError, match="cannot read s3://.*missing.parquet"):
        run(settings, "ingest", "s3-2")
    # S3 down: exit 1, which the operator retries (2 and 3 it never does)
    down = settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{free_port_pairs(1)[0]}"})
    small_spec(down, {"kind": "s3", "uri": f"s3://{s3.bucket}/sources/churn.parquet"})
    with pytest.raises(SourceError, match="cannot reach S3") as unreachable:
        run(down, "ingest", "s3-3")
    assert unreachable.value.exit_code == 1


def test_postgres_query(workspace: Settings, churn_df: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    cols = ", ".join(
        f"{c} {'timestamptz' if c == 'event_timestamp' else 'text' if churn_df[c].dtype == object else 'double precision' if churn_df[c].dtype.kind == 'f' else 'bigint'}"
        for c in churn_df.columns
    )
    with db.connect(workspace) as conn:
        conn.execute("DROP TABLE IF EXISTS churn_source")
        conn.execute(f"CREATE TABLE churn_source ({cols})")  # type: ignore[arg-type]
        with conn.cursor().copy(f"COPY churn_source ({', '.join(churn_df.columns)}) FROM STDIN") as copy:  # type: ignore[arg-type]
            for row in churn_df.itertuples(index=False):
                copy.write_row(row)
    small_spec(
        workspace, {"kind": "postgres", "query": "SELECT * FROM churn_source ORDER BY event_timestamp, customer_id"}
    )
    m = run(workspace, "ingest", "pg-1")
    snap = _snapshot(workspace, "pg-1")
    assert m["rows"] == len(churn_df) == len(snap)
    assert snap["customer_id"].tolist() == churn_df["customer_id"].tolist()
    assert snap["plan"].tolist() == churn_df["plan"].tolist()
    # The query runs read-only: a source can never change the database it reads, not even by a
    # write inside a WITH (the one statement is a read; its server-side cursor refuses the DELETE
    # in it, and so would the READ ONLY transaction).
    write = "WITH gone AS (DELETE FROM churn_source RETURNING *) SELECT * FROM gone"
    small_spec(workspace, {"kind": "postgres", "query": write})
    with pytest.raises(SourceError, match="must not contain data-modifying statements"):
        run(workspace, "ingest", "pg-2")
    with db.connect(workspace) as conn:
        assert conn.execute("SELECT count(*) FROM churn_source").fetchone() == (len(churn_df),)
    small_spec(workspace, {"kind": "postgres", "query": "SELECT 1", "url_env": "CHURN_DB_URL"})
    monkeypatch.delenv("CHURN_DB_URL", raising=False)
    with pytest.raises(SourceError, match="CHURN_DB_URL is not set"):
        run(workspace, "ingest", "pg-3")
    small_spec(workspace, {"kind": "postgres", "query": "SELECT * FROM churn_source WHERE false"})
    with pytest.raises(SourceError, match="returned no rows"):
        run(workspace, "ingest", "pg-4")


def test_rerun_with_the_same_run_id_is_identical_and_not_duplicated(
    workspace: Settings, tmp_path: Path, churn_df: pd.DataFrame
) -> None:
    src = tmp_path / "churn.parquet"
    churn_df.to_parquet(src, index=False)
    small_spec(workspace, {"kind": "file", "path": str(src)})
    storage = open_storage(workspace)
    first = {s: run(workspace, s, "same-1") for s in ("ingest", "validate", "features")}
    files = {k: storage.read_bytes(k) for k in storage.list("churn/same-1")}
    # The source changes under the run: a retry of the run still sees the run's snapshot.
    churn_df.head(100).to_parquet(src, index=False)
    again = {s: run(workspace, s, "same-1") for s in ("ingest", "validate", "features")}
    assert again["ingest"]["reused"] is True
    assert again["ingest"]["content_hash"] == first["ingest"]["content_hash"]
    assert {k: storage.read_bytes(k) for k in storage.list("churn/same-1")} == files
    with db.connect(workspace) as conn:
        count = conn.execute(
            "SELECT count(*) FROM dataset_snapshots WHERE pipeline='churn' AND run_id='same-1'"
        ).fetchone()
    assert count == (1,)
    # --force takes a new snapshot of the changed source.
    forced = run(workspace, "ingest", "same-1", force=True)
    assert forced["rows"] == 100


def test_a_runs_source_uri_is_read_only_from_the_allowed_folders_and_never_quoted(
    workspace: Settings, churn_df: pd.DataFrame, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`source_uri` (the trigger form's, `mlcycle run --conf`'s) names a file under the state dir's
    `data/` folder or the spec's own source folder; anything else is refused (exit 2) before it is
    opened. A file there that is not the contract's CSV (a copy of /etc/passwd) is refused (exit 3)
    with its count of columns, and no log line or error quotes it."""
    import json

    from pipelines.core.errors import InvalidArgument, SourceDataError
    from pipelines.core.params import ENV
    from pipelines.core.settings import scoped_environ

    spec_dir = tmp_path / "spec-data"
    spec_dir.mkdir()
    churn_df.to_csv(spec_dir / "churn.csv", index=False)
    small_spec(workspace, {"kind": "file", "path": str(spec_dir / "churn.csv")})
    outside = tmp_path / "elsewhere" / "churn.csv"
    outside.parent.mkdir()
    churn_df.to_csv(outside, index=False)
    passwd = workspace.state_path / "data" / tmp_path.name / "passwd.csv"
    passwd.parent.mkdir(parents=True)
    passwd.write_bytes(b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    as_of = churn_df["event_timestamp"].max().isoformat()

    def ingest(uri: str, run_id: str) -> dict[str, object]:
        with scoped_environ({ENV: json.dumps({"source_uri": uri, "as_of": as_of})}):
            return run(workspace, "ingest", run_id)

    with pytest.raises(InvalidArgument, match=f"source_uri: {outside} is outside the folders"):
        ingest(str(outside), "uri-outside")
    with caplog.at_level("DEBUG"), pytest.raises(SourceDataError) as err:
        ingest(str(passwd), "uri-passwd")
    assert err.value.exit_code == 3
    assert "the file has 1 column and none is event_timestamp" in str(err.value)
    assert "the contract needs customer_id, event_timestamp, tenure_months" in str(err.value)
    said = str(err.value) + "\n".join(r.getMessage() for r in caplog.records)
    assert "root:x" not in said and "/bin/bash" not in said
    churn_df.head(50).to_csv(spec_dir / "other.csv", index=False)  # beside the spec's own source: read
    assert ingest(str(spec_dir / "other.csv"), "uri-beside")["rows"] == 50


def test_a_postgres_source_runs_one_read_statement_as_the_read_only_role(workspace: Settings, tmp_path: Path) -> None:
    """Against the real embedded PostgreSQL: a second statement, a COPY to a program and a write
    through a CTE are refused, and nothing they name happens; the default role is no superuser."""
    from pipelines.core.errors import SpecError
    from pipelines.core.spec import PostgresSource
    from pipelines.io.sources import read_source

    with db.connect(workspace) as conn:
        conn.execute("DROP TABLE IF EXISTS x")
        conn.execute("CREATE TABLE x (id bigint)")
        conn.execute("INSERT INTO x VALUES (1), (2)")

    def unchecked(query: str) -> PostgresSource:  # as a spec that skipped validation would give it
        return PostgresSource.model_construct(kind="postgres", query=query, url_env=None, allowed_uris=[])

    # the spec refuses them, and the reader again before it connects
    small_spec(workspace, {"kind": "postgres", "query": "SELECT 1; COMMIT; DROP TABLE x"})  # out of READ ONLY
    with pytest.raises(SpecError, match="3 statements; the Postgres source runs exactly one read statement"):
        run(workspace, "ingest", "pg-multi")
    with pytest.raises(SourceError, match="source.query: 2 statements"):
        read_source(unchecked("SELECT 1; DROP TABLE x"), workspace)
    with pytest.raises(SourceError, match="source.query: 3 statements"):  # a `;` in a literal separates nothing
        read_source(unchecked("SELECT 'a;b' AS t; COMMIT; DROP TABLE x"), workspace)
    marker = tmp_path / "ran"
    with pytest.raises(SourceError, match="source.query: a COPY statement"):
        read_source(unchecked(f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'"), workspace)
    with pytest.raises(SourceError, match="must not contain data-modifying statements"):  # the cursor's refusal
        read_source(unchecked("WITH d AS (DELETE FROM x RETURNING *) SELECT * FROM d"), workspace)
    with db.connect(workspace) as conn:
        assert conn.execute("SELECT count(*) FROM x").fetchone() == (2,)  # x is still there, whole

    # the default connection: the platform database as its read-only role, never its superuser
    from pipelines.io.sources.readers import SOURCE_ROLE, source_url

    who = read_source(
        unchecked("SELECT current_user AS who, r.rolsuper FROM pg_roles r WHERE r.rolname = current_user"), workspace
    )
    assert who.to_dict("records") == [{"who": SOURCE_ROLE, "rolsuper": False}]
    assert read_source(unchecked("SELECT id FROM x ORDER BY id"), workspace)["id"].tolist() == [1, 2]
    with pytest.raises(SourceError, match="permission denied"):  # the role runs no server program, reads no file
        read_source(unchecked("SELECT pg_read_file('PG_VERSION') AS v"), workspace)
    import psycopg

    with psycopg.connect(source_url(unchecked("SELECT 1"), workspace), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'")  # type: ignore[arg-type]
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):  # its every transaction is READ ONLY
            conn.execute("INSERT INTO x VALUES (3)")
    assert not marker.exists()

    # the rows come a chunk at a time through a server-side cursor, all of them, in order
    from pipelines.io.sources.readers import postgres_frames

    chunks = postgres_frames(unchecked("SELECT g AS id FROM generate_series(1, 5) g ORDER BY g"), workspace, None, 2)
    assert [c["id"].tolist() for c in chunks] == [[1, 2], [3, 4], [5]]
    # a numeric id past a float's 53 bits comes back exact, not rounded through a float
    (big,) = postgres_frames(unchecked("SELECT 12345678901234567891::numeric AS id"), workspace, None)
    assert str(big["id"].iloc[0]) == "12345678901234567891"


def test_a_runs_s3_source_uri_outside_its_pipelines_prefix_is_refused_before_anything_is_read(
    workspace: Settings, s3: S3Server, churn_df: pd.DataFrame
) -> None:
    """On a real S3 (SeaweedFS): the spec reads `s3://<bucket>/churn/`; a run's `source_uri` naming
    another pipeline's object in the same bucket, or the artifact root, is refused by ingest (exit
    2, naming `source_uri`) though the object is there; one under the spec's prefix is read."""
    import json

    from pipelines.core.errors import InvalidArgument
    from pipelines.core.params import ENV
    from pipelines.core.settings import scoped_environ

    buf = io.BytesIO()
    churn_df.to_parquet(buf, index=False)
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    for key in ("churn/in.parquet", "churn/other.parquet", "tumours/in.parquet", "ml/tumours/r1/train.parquet"):
        client.put_object(Bucket=s3.bucket, Key=key, Body=buf.getvalue())
    settings = workspace.model_copy(update={"s3_endpoint_url": s3.endpoint, "artifact_root": f"s3://{s3.bucket}/ml"})
    small_spec(settings, {"kind": "s3", "uri": f"s3://{s3.bucket}/churn/in.parquet"})
    as_of = churn_df["event_timestamp"].max().isoformat()

    def ingest(uri: str, run_id: str) -> dict[str, object]:
        with scoped_environ({ENV: json.dumps({"source_uri": uri, "as_of": as_of})}):
            return run(settings, "ingest", run_id)

    for uri, why in [
        (f"s3://{s3.bucket}/tumours/in.parquet", "is outside the folders and prefixes"),
        (f"s3://{s3.bucket}/ml/tumours/r1/train.parquet", "is inside the artifact root"),
    ]:
        with pytest.raises(InvalidArgument, match=f"source_uri: {uri} {why}") as err:
            ingest(uri, "s3-uri-refused")
        assert err.value.exit_code == 2
    assert ingest(f"s3://{s3.bucket}/churn/other.parquet", "s3-uri-taken")["rows"] == len(churn_df)
