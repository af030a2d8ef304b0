"""The features step on real Feast: SQL registry and online store in PostgreSQL, Parquet offline."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from pipelines.core.settings import Settings, spec_for
from pipelines.core.system import stop_processes
from pipelines.io import db
from pipelines.io.featurestore import feature_store, historical_features
from pipelines.io.storage import open_storage, read_parquet
from pipelines.io.tracking import mlflow_uri
from pipelines.local.platform import service_argv
from serving.online import FeastSdk, PostgresOnlineTables
from tests.integration.helpers import run_through, small_spec
from tests.services import S3Server, free_port_pairs

pytestmark = pytest.mark.integration


@pytest.fixture
def applied(workspace: Settings, churn_df: pd.DataFrame, tmp_path: Path) -> tuple[Settings, pd.DataFrame, dict]:  # type: ignore[type-arg]
    churn_df.to_parquet(tmp_path / "churn.parquet", index=False)
    small_spec(workspace, {"kind": "file", "path": str(tmp_path / "churn.parquet")})
    outputs = run_through(workspace, "feast-1")
    return workspace, churn_df, outputs


def test_training_set_is_split_by_time_and_complete(applied) -> None:  # type: ignore[no-untyped-def]
    settings, df, outputs = applied
    manifest = outputs["features"]
    assert manifest["feature_service"] == "churn_features_v1"
    assert manifest["dropped_entity_rows"] == 0
    storage = open_storage(settings)
    parts = {s: read_parquet(storage, f"churn/feast-1/features/{s}.parquet") for s in ("train", "validation", "test")}
    assert sum(len(p) for p in parts.values()) == len(df)
    assert parts["train"]["event_timestamp"].max() < parts["validation"]["event_timestamp"].min()
    assert parts["validation"]["event_timestamp"].max() < parts["test"]["event_timestamp"].min()
    features = manifest["features"]
    assert not parts["train"][features].isna().any().any()
    # The joined features are the values recorded for that customer at that time.
    merged = parts["test"].merge(df, on=["customer_id", "event_timestamp"], suffixes=("", "_src"))
    assert len(merged) == len(parts["test"])
    for f in features:
        assert (merged[f] == merged[f"{f}_src"]).all(), f


def test_a_training_set_built_in_chunks_is_the_one_built_at_once(applied, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The point-in-time join of a chunk of entity rows never depends on another: in chunks of 700
    rows the step writes the same splits, row for row and in the same order, as in one."""
    from pipelines.steps import features

    settings, df, outputs = applied
    monkeypatch.setattr(features, "CHUNK_ROWS", 700)
    chunked = run_through(settings, "feast-chunks")["features"]
    assert chunked["chunks"] == -(-len(df) // 700) > 1 and outputs["features"]["chunks"] == 1
    storage = open_storage(settings)
    for name in ("train", "validation", "test"):
        whole = read_parquet(storage, f"churn/feast-1/features/{name}.parquet")
        parts = read_parquet(storage, f"churn/feast-chunks/features/{name}.parquet")
        pd.testing.assert_frame_equal(parts, whole)
        once, again = outputs["features"]["splits"][name], chunked["splits"][name]
        assert {k: v for k, v in again.items() if k != "uri"} == {k: v for k, v in once.items() if k != "uri"}


def test_point_in_time_join_never_looks_ahead(applied) -> None:  # type: ignore[no-untyped-def]
    settings, df, _ = applied
    spec = spec_for(settings, "churn")
    # A customer seen at several month ends, asked about mid-month: the answer is the previous
    # month end's row, never the next one; beyond the views' TTL (45 days) there is no row.
    cid = int(df.groupby("customer_id").size().idxmax())
    rows = df[df["customer_id"] == cid].sort_values("event_timestamp")
    t1, t2 = rows["event_timestamp"].iloc[0], rows["event_timestamp"].iloc[1]
    mid = t1 + (t2 - t1) / 2
    entities = pd.DataFrame(
        {
            "customer_id": [cid, cid, cid],
            "event_timestamp": [mid, t2, rows["event_timestamp"].iloc[-1] + pd.Timedelta(days=60)],
            "churned": [0, 0, 0],
        }
    )
    with feature_store(spec, settings) as store:
        out = historical_features(store, spec, entities).sort_values("event_timestamp").reset_index(drop=True)
    assert out.loc[0, "usage_hours_30d"] == rows["usage_hours_30d"].iloc[0]
    assert out.loc[0, "tenure_months"] == rows["tenure_months"].iloc[0]
    assert out.loc[1, "usage_hours_30d"] == rows["usage_hours_30d"].iloc[1]
    # an entity row that no view can answer within its TTL is dropped (Feast's DuckDB store answers
    # it with nulls; `historical_features` leaves it out); the features step counts such rows
    assert len(out) == 2


def test_online_store_serves_the_latest_values(applied) -> None:  # type: ignore[no-untyped-def]
    settings, df, _ = applied
    spec = spec_for(settings, "churn")
    latest = df.sort_values("event_timestamp").groupby("customer_id").tail(1).set_index("customer_id")
    ids = [int(i) for i in latest.index[:5]]
    with feature_store(spec, settings) as store:
        online = (
            store.get_online_features(
                features=store.get_feature_service(spec.features.feature_service),
                entity_rows=[{"customer_id": i} for i in ids],
            )
            .to_df()
            .set_index("customer_id")
        )
    for i in ids:
        assert online.loc[i, "usage_hours_30d"] == pytest.approx(latest.loc[i, "usage_hours_30d"])
        assert online.loc[i, "plan"] == latest.loc[i, "plan"]


def test_the_direct_online_read_answers_what_feasts_sdk_answers(applied) -> None:  # type: ignore[no-untyped-def]
    """Serving reads Feast's PostgreSQL online tables itself (one prepared async statement); the
    SDK is the reference: every feature of every entity equal, an unknown entity all None, and a
    connection the database dropped replaced on the next read."""
    settings, df, _ = applied
    spec = spec_for(settings, "churn")
    features = spec.model.numeric_features + spec.model.categorical_features
    ids: list[str | int] = [int(i) for i in df["customer_id"].drop_duplicates().head(40)] + [987_654_321]
    sdk = FeastSdk(spec, settings, features)
    direct = PostgresOnlineTables(spec, settings, features)

    async def read_twice_across_a_dropped_connection() -> tuple[list[dict], list[dict]]:  # type: ignore[type-arg]
        first = await direct.lookup(ids)
        pid = direct._conn.info.backend_pid
        with db.connect(settings, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        second = await direct.lookup(ids)
        assert direct._conn.info.backend_pid != pid
        return first, second

    try:
        expected = sdk.lookup_blocking(ids)
        first, second = asyncio.run(read_twice_across_a_dropped_connection())
    finally:
        sdk.close()
        direct.close()
    assert first == expected and second == expected
    assert expected[-1] == dict.fromkeys(features)  # the unknown entity
    assert all(v is not None for row in expected[:-1] for v in row.values())
    assert sorted(expected[0]) == sorted(features)


def test_features_with_artifacts_on_s3(
    workspace: Settings, s3: S3Server, churn_df: pd.DataFrame, tmp_path: Path
) -> None:
    """The cluster layout: snapshots on S3 (SeaweedFS). Feast's file offline store reads a local
    copy of the validated snapshot; the training set is the same as with local artifacts."""
    churn_df.to_parquet(tmp_path / "churn.parquet", index=False)
    settings = workspace.model_copy(
        update={"artifact_root": f"s3://{s3.bucket}/features-s3", "s3_endpoint_url": s3.endpoint}
    )
    small_spec(settings, {"kind": "file", "path": str(tmp_path / "churn.parquet")})
    manifest = run_through(settings, "feast-s3")["features"]
    assert manifest["source"].startswith(f"s3://{s3.bucket}/features-s3/")
    assert manifest["dropped_entity_rows"] == 0
    train = read_parquet(open_storage(settings), "churn/feast-s3/features/train.parquet")
    assert len(train) == manifest["splits"]["train"]["rows"] > 0
    assert not train[manifest["features"]].isna().any().any()


PLAIN_CLIENTS = """
import json, os
import mlflow, psycopg
from feast import FeatureStore
store = FeatureStore(repo_path=os.environ["REPO"])
online = store.get_online_features(
    features=store.get_feature_service("churn_features_v1"), entity_rows=[{"customer_id": int(os.environ["ID"])}]
).to_dict()
experiments = [e.name for e in mlflow.MlflowClient().search_experiments()]
with psycopg.connect("") as conn:  # libpq reads PGHOST & co.
    tables = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'churn_%'").fetchone()[0]
print(json.dumps({"plan": online["plan"][0], "experiments": experiments, "tables": tables}))
"""


def test_mlcycle_env_is_all_a_plain_client_needs(applied) -> None:  # type: ignore[no-untyped-def]
    """docs/platform.md's way to the plain clients: `eval "$(mlcycle env)"`, then the Feast SDK on
    feature_repo/, the MLflow client and libpq, in a process that has no MLCYCLE_* setting."""
    settings, df, _ = applied
    mlflow.MlflowClient(tracking_uri=mlflow_uri(settings)).create_experiment("env-check")
    # the tracking server `mlcycle up` runs (what the MLflow UI shows; it asks for a login), on a port of this test
    (port,) = free_port_pairs(1)
    argv, env = service_argv(settings.model_copy(update={"mlflow_port": port}), "mlflow", db.database_url(settings))
    server = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _plain_clients_answer(settings, df, port)
    finally:
        stop_processes([server])


def _plain_clients_answer(settings: Settings, df: pd.DataFrame, port: int) -> None:
    import httpx

    for _ in range(600):  # the server's first start creates nothing (the schema is migrated)
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    exports = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "env"],
        env={**os.environ, **settings.pod_env(), "MLCYCLE_MLFLOW_PORT": str(port)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in exports  # the server, not the database
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLCYCLE_", "MLFLOW_", "PG"))}
    env.update(dict(t.split("=", 1) for t in shlex.split(exports, comments=True) if t != "export"))
    latest = df.sort_values("event_timestamp").groupby("customer_id").tail(1).iloc[0]
    env.update(REPO=str(settings.project_dir / "feature_repo"), ID=str(int(latest["customer_id"])))
    out = subprocess.run([sys.executable, "-c", PLAIN_CLIENTS], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer["plan"] == latest["plan"] and answer["tables"] >= 2
    assert "env-check" in answer["experiments"]  # made by this process, seen by the plain client


def test_the_feature_resource_reads_views_services_and_their_materialization_from_the_registry(applied) -> None:  # type: ignore[no-untyped-def]
    """`/api/ml/features`' read: what the features step applied and materialized, from Feast's
    registry; a pipeline never applied has no views yet (not an error)."""
    from pipelines.io.resources import feature_views

    settings, df, _ = applied
    spec = spec_for(settings, "churn")
    got = feature_views(settings, "churn")
    assert got["feature_service"] == spec.features.feature_service
    services = {s["name"]: s["feature_views"] for s in got["feature_services"]}
    assert spec.features.feature_service in services
    views = {v["name"]: v for v in got["feature_views"]}
    assert set(services[spec.features.feature_service]) <= set(views)
    last = pd.Timestamp(df[spec.entity.timestamp].max()).to_pydatetime()
    for view in views.values():
        assert view["entities"] and view["features"] and view["online"]
        materialized = pd.Timestamp(view["last_materialized"]).to_pydatetime()
        assert abs((materialized - last).total_seconds()) <= 1.5  # the step materializes up to the newest row
        assert view["age_s"] > 0 and view["fresh"] is (view["age_s"] <= view["ttl_s"] if view["ttl_s"] else None)
    small_spec(settings, {"kind": "file", "path": "never.parquet"}, name="res_never")
    never = feature_views(settings, "res_never")
    assert never["feature_views"] == [] and never["versions"] == {}
