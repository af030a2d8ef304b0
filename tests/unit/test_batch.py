"""Batch predictions' pure parts: the spec section, the partitioning, the quarantine reasons, the
endpoint's answer shape, the pin's as_of and the publish summary."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core.errors import SpecError, StepInputError
from pipelines.core.spec import OfflineStoreEntities, PostgresSource, parse_spec
from pipelines.io.batch import newest_mask
from pipelines.steps.batch import NO_FEATURES, answers, partition_of, row_reasons, surely_clean
from pipelines.steps.batch_pin import pinned_as_of
from pipelines.steps.batch_publish import summarize
from serving.contract import FeatureRule, RequestContract
from tests.specs import churn_spec_dict

CONTRACT = RequestContract(
    {
        "tenure_months": FeatureRule("tenure_months", "integer", low=0, high=600),
        "usage": FeatureRule("usage", "number", nullable=True, low=0, high=744),
        "plan": FeatureRule("plan", "category", allowed=frozenset({"basic", "pro"})),
    }
)
NAMES = ["tenure_months", "usage", "plan"]


def _spec(**batch: object):  # type: ignore[no-untyped-def]
    return parse_spec({**churn_spec_dict(), "batch": batch}, "churn.yaml")


# ------------------------------------------------------------------------------------- spec
def test_the_batch_section_is_optional_and_defaults_to_every_offline_entity_into_the_table() -> None:
    without = {k: v for k, v in churn_spec_dict().items() if k != "batch"}
    assert parse_spec(without, "churn.yaml").batch is None
    batch = _spec().batch
    assert batch is not None
    assert isinstance(batch.entities, OfflineStoreEntities)
    assert (batch.schedule, batch.as_of, batch.parallelism) == (None, None, 1)
    assert (batch.outputs.table, batch.outputs.parquet) == (True, False)


def test_the_batch_section_takes_a_source_as_ingest_reads_one_and_refuses_nonsense() -> None:
    batch = _spec(
        entities={"kind": "postgres", "query": "SELECT * FROM customers"},
        as_of="2026-01-31T00:00:00Z",
        parallelism=4,
        chunk_rows=1000,
        outputs={"table": False, "parquet": True},
        schedule="@daily",
    ).batch
    assert batch is not None and isinstance(batch.entities, PostgresSource)
    assert batch.as_of == datetime(2026, 1, 31, tzinfo=UTC)
    for bad, where in [
        ({"parallelism": 0}, "batch.parallelism"),
        ({"outputs": {"table": False, "parquet": False}}, "batch.outputs"),
        ({"entities": {"kind": "feature_store"}}, "batch.entities"),
        ({"chunk_rows": 10}, "batch.chunk_rows"),
        ({"partitions": 2}, "batch.partitions"),
    ]:
        with pytest.raises(SpecError, match=where.replace(".", r"\.")):
            _spec(**bad)


# ------------------------------------------------------------------------------ partitioning
def test_every_entity_lands_in_exactly_one_partition_the_same_in_every_process() -> None:
    ids = pd.Series(range(1, 10_001))
    parts = partition_of(ids, 4)
    assert set(parts) == {0, 1, 2, 3}
    assert all(1500 < (parts == n).sum() < 3500 for n in range(4))  # spread, not all in one
    # the same id in another order, or in a frame of its own: the same partition
    shuffled = ids.sample(frac=1, random_state=3)
    again = dict(zip(shuffled, partition_of(shuffled, 4), strict=True))
    assert all(again[i] == p for i, p in zip(ids, parts, strict=True))
    assert partition_of(pd.Series([7]), 4)[0] == parts[6]
    text = partition_of(ids.astype(str), 4)  # text ids hash their text
    assert set(text) == {0, 1, 2, 3} and (text == partition_of(ids.astype(str).sample(frac=1).sort_index(), 4)).all()
    assert set(partition_of(ids, 1)) == {0}


def test_newest_mask_keeps_each_entitys_newest_row_at_or_before_as_of() -> None:
    t = pd.Timestamp("2026-01-01", tz="UTC")
    df = pd.DataFrame(
        {
            "id": [1, 1, 2, 2, 3],
            "ts": [t, t + timedelta(days=30), t, t + timedelta(days=90), t + timedelta(days=90)],
            "x": [10, 11, 20, 21, 30],
        }
    )
    out = df[newest_mask(df["id"], df["ts"], (t + timedelta(days=60)).to_pydatetime())]
    assert sorted(zip(out["id"], out["x"], strict=True)) == [(1, 11), (2, 20)]  # 3 only exists later
    since = df[newest_mask(df["id"], df["ts"], (t + timedelta(days=90)).to_pydatetime(), t.to_pydatetime())]
    assert sorted(zip(since["id"], since["x"], strict=True)) == [(1, 11), (2, 21), (3, 30)]
    plain = pd.DataFrame({"id": [1, 1, 2], "x": [1, 2, 3]})
    no_time = plain[newest_mask(plain["id"], None, t.to_pydatetime())]
    assert sorted(zip(no_time["id"], no_time["x"], strict=True)) == [(1, 2), (2, 3)]


# ------------------------------------------------------------------------------ quarantine
@pytest.mark.parametrize(
    ("row", "entity", "found", "reason"),
    [
        ({"tenure_months": 3, "usage": 1.5, "plan": "pro"}, 7, True, None),
        ({"tenure_months": 3, "usage": float("nan"), "plan": "pro"}, 7, True, None),  # nullable: scored
        ({"tenure_months": 3.0, "usage": None, "plan": "basic"}, "c-1", True, None),
        ({"tenure_months": -1, "usage": 1.0, "plan": "pro"}, 7, True, "tenure_months: -1 is below the minimum 0"),
        ({"tenure_months": 3, "usage": 1.0, "plan": "gold"}, 7, True, "plan: 'gold' is not one of basic, pro"),
        (
            {"tenure_months": float("nan"), "usage": 1.0, "plan": "pro"},
            7,
            True,
            "tenure_months: null, but the contract does not allow nulls for this feature",
        ),
        (
            {"tenure_months": 3, "usage": 9999.0, "plan": 5},
            7,
            True,
            "usage: 9999.0 is above the maximum 744; plan: not a string (5)",
        ),
        ({"tenure_months": None, "usage": None, "plan": None}, 7, False, NO_FEATURES),
        ({"tenure_months": 3, "usage": 1.0, "plan": "pro"}, "", True, "entity_id: must not be empty"),
        (
            {"tenure_months": 3, "usage": 1.0, "plan": "pro"},
            "x" * 300,
            True,
            "entity_id: longer than 256 characters (300)",
        ),
    ],
)
def test_a_row_outside_the_request_contract_is_quarantined_with_every_reason(
    row: dict[str, object], entity: object, found: bool, reason: str | None
) -> None:
    assert row_reasons(CONTRACT, NAMES, row, entity, found) == reason


# ------------------------------------------------------------------------------ answer shape
def test_answers_have_the_endpoints_shape_score_or_class_with_probabilities() -> None:
    binary = answers({"score": np.array([[0.25], [0.75]], dtype=np.float32)}, [])
    assert list(binary) == ["score"] and binary["score"].tolist() == [0.25, 0.75]  # class, probabilities: null
    decided = answers({"score": np.array([[0.25], [0.75], [0.3]], dtype=np.float32)}, [], threshold=0.3)
    assert decided["class"].tolist() == ["0", "1", "1"]  # a binary model's decision at its own threshold
    multi = answers(
        {
            "score": np.array([0.5, 0.75], dtype=np.float32),
            "class": np.array(["a", "b"], dtype=object),
            "probabilities": np.array([[0.5, 0.25, 0.25], [0.125, 0.75, 0.125]], dtype=np.float32),
        },
        ["a", "b", "c"],
    )
    assert multi["class"] == ["a", "b"] and multi["score"].tolist() == [0.5, 0.75]
    assert json.loads(multi["probabilities"][1]) == {"a": 0.125, "b": 0.75, "c": 0.125}


# ------------------------------------------------------------------------------ pin, publish
def test_the_pinned_as_of_is_the_specs_else_the_runs_else_now_in_utc() -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    declared = datetime(2026, 1, 1, tzinfo=UTC)
    run = datetime(2026, 2, 1, 2, tzinfo=timezone(timedelta(hours=2)))
    assert pinned_as_of(declared, run, now) == declared
    assert pinned_as_of(None, run, now) == datetime(2026, 2, 1, tzinfo=UTC)
    assert pinned_as_of(None, None, now) == now
    assert pinned_as_of(None, datetime(2026, 2, 1), now).tzinfo == UTC  # naive read as UTC


PIN = {
    "pipeline": "churn",
    "version": 3,
    "as_of": "2026-01-01T00:00:00+00:00",
    "pinned_at": "2026-01-02T00:00:00+00:00",
}


def _part(n: int, version: int = 3) -> dict[str, object]:
    outputs = {"table": "batch_predictions", "parquet": f"s3://b/churn/r/batch/part-{n}.parquet"}
    return {"partition": n, "version": version, "rows_scored": 10 + n, "rows_quarantined": n, "outputs": outputs}


def test_the_publish_summary_adds_up_the_partitions_and_refuses_a_stray_version() -> None:
    now = datetime(2026, 1, 2, 0, 1, 30, tzinfo=UTC)
    summary = summarize(PIN, [_part(0), _part(1)], "r", now)
    assert summary == {
        "pipeline": "churn",
        "run_id": "r",
        "version": 3,
        "as_of": PIN["as_of"],
        "partitions": 2,
        "rows_scored": 21,
        "rows_quarantined": 1,
        "seconds": 90.0,
        "outputs": {
            "table": "batch_predictions",
            "parquet": ["s3://b/churn/r/batch/part-0.parquet", "s3://b/churn/r/batch/part-1.parquet"],
        },
    }
    with pytest.raises(StepInputError, match=r"partitions \[1\] scored another version than the pinned v3"):
        summarize(PIN, [_part(0), _part(1, version=4)], "r", now)


def test_batch_show_renders_each_run_on_one_line() -> None:
    from pipelines.io.batch import render_batch_runs

    assert render_batch_runs("churn", []) == "no published batch runs of churn yet"
    run = {
        "run_id": "scheduled__2026-01-02",
        "version": 3,
        "as_of": datetime(2026, 1, 2, tzinfo=UTC),
        "rows_scored": 2990,
        "rows_quarantined": 10,
        "partitions": 2,
        "seconds": 41.25,
        "published_at": datetime(2026, 1, 2, 0, 1, 2, tzinfo=UTC),
        "outputs": {"table": "batch_predictions", "view": "churn_predictions_latest"},
    }
    text = render_batch_runs("churn", [run])
    assert text.splitlines()[1] == (
        "  scheduled__2026-01-02  v3  as_of 2026-01-02 00:00  2990 scored  10 quarantined  2 partition(s)  41.2 s"
        "  published 2026-01-02 00:01:02  -> table, view churn_predictions_latest"
    )


def test_the_column_wise_check_never_passes_a_row_the_contract_refuses() -> None:
    """`surely_clean` (the fast path) takes a subset of what `row_reasons` takes: every edge value
    of every rule, in every combination with a clean row."""
    edges = {
        "tenure_months": [3, 0, 600, -1, 601, 2.5, float("nan"), float("inf")],
        "usage": [1.5, 0.0, 744.0, -0.1, 745.0, float("nan"), float("-inf")],
        "plan": ["pro", "basic", "gold", "", None, "x" * 300],
    }
    rows = [
        {"id": 7, "_found": found, **{n: v if n == name else edges[n][0] for n in NAMES}}
        for name, values in edges.items()
        for v in values
        for found in (True, False)
    ]
    frame = pd.DataFrame(rows)
    clean = surely_clean(frame, CONTRACT, NAMES, "id")
    judged = [row_reasons(CONTRACT, NAMES, r, r["id"], r["_found"]) is None for r in rows]
    assert not any(c and not j for c, j in zip(clean, judged, strict=True))
    # and it takes every row the contract takes, but those it leaves to the store's absence
    assert list(clean) == [j and r["_found"] for j, r in zip(judged, rows, strict=True)]
    # text ids, an unruled category: nothing is taken column-wise (each row judged on its own)
    assert not surely_clean(frame.assign(id="c-7"), CONTRACT, NAMES, "id").any()


def _staged_rows(spec, tmp_path: Path, t: datetime, parallelism: int = 1, rows: int = 2) -> list[pd.DataFrame]:  # type: ignore[no-untyped-def]
    """Stage the spec's entities in a local storage, then read every partition back `rows` at a time."""
    from pipelines.core.settings import Settings
    from pipelines.io.batch import partition_chunks, stage_entities
    from pipelines.io.storage import LocalStorage

    storage = LocalStorage(tmp_path / "store")
    staged = stage_entities(
        spec, Settings(state_dir=tmp_path), storage, lambda name: f"p/r/batch_pin/{name}", t, parallelism
    )
    key = spec.entity.join_key
    parts = [
        pd.concat(list(partition_chunks(storage, staged.files, staged.keep, key, parallelism, n, rows)))
        for n in range(parallelism)
    ]
    assert [len(p) for p in parts] == staged.partition_rows  # the pin's counts are what partitions read
    assert all(
        len(c) <= rows
        for n in range(parallelism)
        for c in partition_chunks(storage, staged.files, staged.keep, key, parallelism, n, rows)
    )
    # `runtime: ray` reads the same rows a row group at a time (its actors' tasks)
    assert _row_group_rows(storage, staged.files, staged.keep, key, rows).equals(
        pd.concat(parts).sort_values(key, kind="stable", ignore_index=True)
    )
    return parts


def _row_group_rows(storage, files, keep, key: str, rows: int) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    import pyarrow.parquet as pq

    from pipelines.io.batch import kept_rows
    from pipelines.io.storage import local_file
    from pipelines.steps.batch_ray import row_group_tasks

    found = []
    for task in row_group_tasks(storage, files, keep):
        with local_file(storage, task["file"]) as path:
            parquet = pq.ParquetFile(path)
            chunks = kept_rows(parquet, keep, rows, offset=task["offset"], row_groups=[task["row_group"]])
            found += list(chunks)
    assert all(len(c) <= rows for c in found)
    return pd.concat(found).sort_values(key, kind="stable", ignore_index=True)


def test_source_entities_are_each_entitys_newest_row_within_the_lookback(tmp_path: Path) -> None:
    """A file of entities read as ingest reads one: rows after as_of and before the lookback are
    left out, one row per entity stays, and a file without the join key is refused by name."""
    from pipelines.core.errors import SourceDataError

    t = datetime(2026, 1, 31, tzinfo=UTC)
    path = tmp_path / "entities.csv"
    pd.DataFrame(
        {
            "customer_id": [1, 1, 2, 3, 4],
            "event_timestamp": [
                t - timedelta(days=5),
                t - timedelta(days=1),
                t - timedelta(days=40),
                t,
                t + timedelta(days=1),
            ],
            "plan": ["basic", "premium", "basic", "standard", "basic"],
        }
    ).to_csv(path, index=False)
    spec = _spec(entities={"kind": "file", "path": str(path), "lookback_days": 30})
    (rows,) = _staged_rows(spec, tmp_path, t)
    assert sorted(zip(rows["customer_id"], rows["plan"], strict=True)) == [(1, "premium"), (3, "standard")]
    pd.DataFrame({"id": [1]}).to_csv(path, index=False)
    with pytest.raises(SourceDataError, match="no column 'customer_id'"):
        _staged_rows(spec, tmp_path, t)


def test_parquet_entities_are_staged_as_they_are_and_read_back_a_chunk_at_a_time(tmp_path: Path) -> None:
    """A directory of Parquet files (one storing its id as the frame's index, one of row groups
    with older rows of some entities) is copied, not rewritten; every partition reads its own
    entities' newest rows, each once, in chunks of at most 3 rows."""
    import numpy as np

    t = datetime(2026, 1, 31, tzinfo=UTC)
    folder = tmp_path / "in"
    folder.mkdir()
    ids = np.arange(1, 41)
    frame = pd.DataFrame({"customer_id": ids, "event_timestamp": t - timedelta(days=1), "plan": "basic"})
    older = frame.iloc[::3].assign(event_timestamp=t - timedelta(days=3))  # rows the pin leaves out
    both = pd.concat([older, frame.iloc[:25]]).sort_values("customer_id", kind="stable")
    both.to_parquet(folder / "a.parquet", index=False, row_group_size=7)  # several row groups
    frame.iloc[25:].set_index("customer_id").to_parquet(folder / "b.parquet")
    spec = _spec(entities={"kind": "file", "path": str(folder)}, parallelism=3)
    parts = _staged_rows(spec, tmp_path, t, parallelism=3, rows=3)
    assert sorted(pd.concat(parts)["customer_id"]) == list(ids)  # each entity once
    assert set(pd.concat(parts)["event_timestamp"]) == {t - timedelta(days=1)}  # its newest row
    assert (
        all(len(p) for p in parts)
        and (tmp_path / "store/p/r/batch_pin/entities-1.parquet").read_bytes() == (folder / "b.parquet").read_bytes()
    )
    for n, part in enumerate(parts):
        assert set(partition_of(part["customer_id"], 3)) == {n}


def test_id_text_writes_an_integer_id_as_the_endpoint_logs_it() -> None:
    from pipelines.steps.batch_score import id_text

    ids = pd.Series([0, 7, -3, 2**62, 123456789], dtype="int64")
    assert list(id_text(ids)) == [str(i) for i in ids.tolist()]
    assert list(id_text(pd.Series(["c-1", "c-2"]))) == ["c-1", "c-2"]
    assert list(id_text(pd.Series([1.0, 2.5]))) == ["1.0", "2.5"]  # what astype(str) writes
