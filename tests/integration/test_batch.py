"""Batch predictions against the real platform database, registry and Feast offline store: a
trained churn champion scores every entity in two partitions, with the version pinned before the
alias moved, partitions replace only their own rows, bad rows are quarantined and counted, the
answers equal the endpoint's scoring of the same features, and no valid row exits 3."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipelines.core.errors import DataQualityError
from pipelines.core.settings import Settings, scoped_environ
from pipelines.io import db
from pipelines.io.registry import load_onnx_model, model_name
from pipelines.io.storage import open_storage, read_parquet, run_key
from pipelines.ml.imbalance import session_threshold
from pipelines.ml.model import onnx_session
from pipelines.steps.batch import NO_FEATURES, partition_of
from tests.integration.helpers import copy_as_champion, run, run_through, small_spec, step_process

pytestmark = pytest.mark.integration

PIPELINE = "churn_batch"
SOURCE = {"kind": "synthetic", "customers": 600, "months": 6, "seed": 5, "start": "2025-01-01"}
FAST = {"n_trials": 1, "max_epochs": 4, "early_stopping_patience": 2, "pruner": "none", "batch_size": 128}
LIFECYCLE = ("ingest", "validate", "features", "train", "evaluate", "promote")
AS_OF = "2025-06-15T00:00:00+00:00"  # the last month (June) is within the views' 45-day TTL
BATCH = {"as_of": AS_OF, "parallelism": 2, "chunk_rows": 100, "outputs": {"table": True, "parquet": True}}


def write_batch(settings: Settings, **batch: Any) -> None:
    small_spec(settings, SOURCE, name=PIPELINE, training=FAST, batch={**BATCH, **batch})


@pytest.fixture(scope="module")
def champion(platform: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    tmp = tmp_path_factory.mktemp("batch")
    (tmp / "pipelines").mkdir()
    settings = platform.model_copy(update={"pipelines_dir": tmp / "pipelines", "artifact_root": str(tmp / "artifacts")})
    write_batch(settings)
    assert run_through(settings, "train-1", LIFECYCLE, PIPELINE)["promote"]["version"] == 1
    with scoped_environ(settings.pod_env()):
        yield settings


def rows_of(settings: Settings, run_id: str) -> pd.DataFrame:
    with db.connect(settings) as conn:
        found = db.fetch_dicts(
            conn,
            "SELECT partition, entity_id, as_of, version, score, class, probabilities, scored_at"
            " FROM batch_predictions WHERE pipeline=%s AND run_id=%s",
            (PIPELINE, run_id),
        )
    return pd.DataFrame(
        found, columns=["partition", "entity_id", "as_of", "version", "score", "class", "probabilities", "scored_at"]
    )


def expected_entities(settings: Settings) -> pd.DataFrame:
    """Every customer with a snapshot row within 45 days before AS_OF, its newest such row:
    what the offline store answers point-in-time, read here from the snapshot itself."""
    snap = read_parquet(open_storage(settings), run_key(PIPELINE, "train-1", "validate", "validated.parquet"))
    as_of = pd.Timestamp(AS_OF)
    ts = pd.to_datetime(snap["event_timestamp"], utc=True)
    recent = snap[(ts <= as_of) & (ts > as_of - timedelta(days=45))].assign(event_timestamp=ts)
    return recent.sort_values("event_timestamp").drop_duplicates("customer_id", keep="last")


def test_two_partitions_score_every_entity_once_with_the_version_pinned_before_the_alias_moved(
    champion: Settings,
) -> None:
    pin = run(champion, "batch_pin", "b1", PIPELINE)
    assert (pin["version"], pin["as_of"], pin["parallelism"]) == (1, AS_OF, 2)
    assert copy_as_champion(champion, PIPELINE) == 2
    parts = [run(champion, "batch", "b1", PIPELINE, worker=n) for n in (0, 1)]
    published = run(champion, "batch_publish", "b1", PIPELINE)

    expected = expected_entities(champion)
    rows = rows_of(champion, "b1")
    assert len(expected) > 300
    assert sorted(rows["entity_id"]) == sorted(expected["customer_id"].astype(str))  # each once, none missing
    assert set(rows["version"]) == {1}  # the pinned version, though champion is v2 now
    assert set(rows["as_of"]) == {datetime.fromisoformat(AS_OF)}
    assert rows["score"].between(0, 1).all()
    session = onnx_session(load_onnx_model(champion, PIPELINE, model_name(PIPELINE), 1))
    threshold = session_threshold(session)
    assert threshold is not None  # the pinned version decides at its own threshold, as it does served
    assert (rows["class"] == rows["score"].ge(threshold).map({True: "1", False: "0"})).all()
    # each row in the partition its id hashes to, and the partitions' counts add up
    assert (rows["partition"].to_numpy() == partition_of(rows["entity_id"].astype("int64"), 2)).all()
    assert [p["rows_scored"] for p in parts] == [int((rows["partition"] == n).sum()) for n in (0, 1)]
    assert all(p["rows_quarantined"] == 0 and p["version"] == 1 for p in parts)
    assert published["rows_scored"] == len(rows) and published["rows_quarantined"] == 0
    assert published["outputs"]["view"] == f"{PIPELINE}_predictions_latest"
    # the Parquet output holds the same answers
    frames = [pd.read_parquet(p) for p in published["outputs"]["parquet"]]
    parquet = pd.concat(frames).set_index("entity_id")["score"].sort_index()
    assert parquet.to_dict() == rows.set_index("entity_id")["score"].sort_index().to_dict()
    with db.connect(champion) as conn:
        latest = conn.execute(
            f"SELECT count(*), min(run_id), max(run_id) FROM {PIPELINE}_predictions_latest"
        ).fetchone()
        summary = conn.execute(
            "SELECT version, rows_scored, rows_quarantined, partitions, published_at IS NOT NULL FROM batch_runs"
            " WHERE pipeline=%s AND run_id='b1'",
            (PIPELINE,),
        ).fetchone()
    assert latest == (len(rows), "b1", "b1")
    assert summary == (1, len(rows), 0, 2, True)


def test_labels_that_arrive_later_score_the_published_batch_predictions_for_the_live_metric(
    champion: Settings,
) -> None:
    """Outcomes observed after run b1 was published (above), without request ids (what a retention
    team loads): each belongs to its entity's batch answer of b1, so the champion's live metric and
    the drift check's performance read them; the A/B of served traffic and the training feedback
    never do (a batch row was not served and holds no features). An outcome observed before
    `as_of`, or before the run was published (b1 is a backfill: its `as_of` is long past), is not
    b1's."""
    from pipelines.io.catalog import champion_live
    from pipelines.io.labels import upsert_labels
    from pipelines.io.requestlog import ab_results, feedback, labelled

    scored = rows_of(champion, "b1").set_index("entity_id")["score"].head(200)
    as_of, observed = datetime.fromisoformat(AS_OF), datetime.now(UTC)
    outcome = {eid: float(n % 2) for n, eid in enumerate(scored.index)}
    late = [(PIPELINE, None, eid, y, observed) for eid, y in outcome.items()]
    early = [(PIPELINE, None, scored.index[0], 1.0, as_of - timedelta(days=1))]
    before_published = [(PIPELINE, None, scored.index[1], 1.0, as_of + timedelta(days=30))]
    assert upsert_labels(champion, late + early + before_published) == 202
    window = (as_of - timedelta(days=1), as_of + timedelta(days=1))  # the predictions' instants

    rows = labelled(champion, PIPELINE, [1], *window, batch=True)
    assert sorted((s, y) for _, s, y in rows) == sorted((scored[e], outcome[e]) for e in scored.index)
    assert labelled(champion, PIPELINE, [2], *window, batch=True) == []  # pinned v1 scored them, not v2
    assert labelled(champion, PIPELINE, [1], *window) == []  # served predictions alone: none
    assert feedback(champion, PIPELINE, None, observed) == []
    ab = ab_results(champion, PIPELINE, 1, 2)
    assert (ab["champion"]["labelled"], ab["challenger"]["labelled"]) == (0, 0)
    # the live metric of the predictions made in the drift window that holds `as_of`
    live = champion_live(champion, PIPELINE, 1, now=datetime.fromisoformat(AS_OF) + timedelta(hours=1))
    assert live is not None and live["value"] is not None and live["rows"] == len(scored), live


def test_a_rerun_partition_replaces_only_its_own_rows(champion: Settings) -> None:
    before = rows_of(champion, "b1").set_index("entity_id")
    again = run(champion, "batch", "b1", PIPELINE, worker=1)
    after = rows_of(champion, "b1").set_index("entity_id")
    assert sorted(after.index) == sorted(before.index)  # nothing doubled, nothing lost
    one = before["partition"] == 1
    assert (after.loc[before.index[one], "scored_at"] > before.loc[one, "scored_at"]).all()  # replaced
    assert (after.loc[before.index[~one], "scored_at"] == before.loc[~one, "scored_at"]).all()  # untouched
    assert again["version"] == 1 and again["rows_scored"] == int(one.sum())


def test_batch_answers_equal_the_endpoints_scoring_of_the_same_features(champion: Settings) -> None:
    """The endpoint's own scoring code (`serving.versions.LocalVersion.run_batch`, contract judged
    as the ingress judges a request) on the snapshot rows the offline store answered with."""
    from pipelines.core.settings import spec_for
    from pipelines.io.registry import load_onnx_model, model_name
    from pipelines.ml.model import onnx_session
    from serving.contract import Judged, request_contract
    from serving.records import Instance, Scored
    from serving.versions import LocalVersion, Pending

    session = onnx_session(load_onnx_model(champion, PIPELINE, model_name(PIPELINE), 1))
    spec = spec_for(champion, PIPELINE)
    contract = request_contract(spec, [i.name for i in session.get_inputs()])
    version = LocalVersion(1, session, None, 256, contract.nullable)
    sample = expected_entities(champion).sample(200, random_state=1)
    pending = []
    for n, row in enumerate(sample[version.names].to_dict("records")):
        judged = contract.judge(n, row)
        assert isinstance(judged, Judged)
        pending.append(Pending(Instance(int(sample["customer_id"].iloc[n]), judged.features)))
    served = version.run_batch(pending)
    assert all(isinstance(s, Scored) for s in served)
    table = rows_of(champion, "b1").set_index("entity_id")["score"]
    batch = table.loc[sample["customer_id"].astype(str)].to_numpy()
    assert batch == pytest.approx([s.score for s in served], abs=1e-6)  # type: ignore[union-attr]


def entities_file(champion: Settings, rows: list[dict[str, Any]]) -> str:
    path = Path(str(champion.artifact_root)).parent / f"entities-{len(rows)}.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_rows_outside_the_contract_are_quarantined_with_reasons_and_counted(champion: Settings) -> None:
    known = expected_entities(champion)["customer_id"].head(5).tolist()
    path = entities_file(
        champion,
        [
            {"customer_id": known[0]},  # every feature from the offline store
            {"customer_id": known[1], "plan": "premium"},  # the row's own plan, the rest looked up
            {"customer_id": known[2], "plan": "gold"},  # not one of the contract's plans
            {"customer_id": known[3], "tenure_months": -3},  # below the contract's minimum
            {"customer_id": 99_999_999},  # the offline store knows nothing of it
        ],
    )
    write_batch(champion, entities={"kind": "file", "path": path}, parallelism=1)
    run(champion, "batch_pin", "b2", PIPELINE)
    out = run(champion, "batch", "b2", PIPELINE, worker=0)
    assert (out["rows"], out["rows_scored"], out["rows_quarantined"]) == (5, 2, 3)
    bad = pd.read_parquet(out["outputs"]["quarantine"]).set_index("entity_id")["reasons"].to_dict()
    assert "plan: 'gold' is not one of" in bad[str(known[2])]
    assert bad[str(known[3])] == "tenure_months: -3.0 is below the minimum 0"
    assert bad["99999999"] == NO_FEATURES
    assert sorted(rows_of(champion, "b2")["entity_id"]) == sorted(map(str, known[:2]))
    published = run(champion, "batch_publish", "b2", PIPELINE)
    assert (published["rows_scored"], published["rows_quarantined"]) == (2, 3)
    with db.connect(champion) as conn:
        (newest,) = conn.execute(f"SELECT DISTINCT run_id FROM {PIPELINE}_predictions_latest").fetchone()
    assert newest == "b2"  # the view flipped to the newest published run


def test_batch_show_lists_the_published_runs_newest_first(
    champion: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.cli import main

    assert main(["batch", "show", "--pipeline", PIPELINE]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{PIPELINE}: batch runs, newest first")
    assert [line.split()[0] for line in lines[1:]] == ["b2", "b1"]
    assert "2 scored  3 quarantined  1 partition(s)" in lines[1] and "view churn_batch_predictions_latest" in lines[2]


def test_no_valid_row_exits_3_and_writes_nothing(champion: Settings) -> None:
    path = entities_file(champion, [{"customer_id": 99_999_998}, {"customer_id": 99_999_997, "plan": "gold"}])
    write_batch(champion, entities={"kind": "file", "path": path}, parallelism=1)
    run(champion, "batch_pin", "b3", PIPELINE)
    with pytest.raises(DataQualityError, match="no valid row to score"):
        run(champion, "batch", "b3", PIPELINE, worker=0)
    proc = step_process(champion, "batch", "--pipeline", PIPELINE, "--run-id", "b3", "--worker", "0")
    assert proc.wait(timeout=300) == 3
    assert rows_of(champion, "b3").empty
    assert not open_storage(champion).exists(run_key(PIPELINE, "b3", "batch", "manifest-0.json"))
    write_batch(champion)  # the module's spec again


def test_a_batch_run_before_the_first_promotion_is_skipped_not_failed(champion: Settings) -> None:
    """A schedule that starts before a pipeline has a champion (a fresh platform's daily batch):
    the pin exits 100, which the operators read as a skipped task, and pins nothing."""
    small_spec(champion, SOURCE, name="churn_unpromoted", training=FAST, batch=BATCH)
    proc = step_process(
        champion, "batch_pin", "--pipeline", "churn_unpromoted", "--run-id", "b0", stderr=subprocess.PIPE
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 100 and "churn_unpromoted has no champion yet: nothing to score" in err
    assert not open_storage(champion).exists(run_key("churn_unpromoted", "b0", "batch_pin", "manifest.json"))


def test_retention_removes_the_rows_of_old_batch_runs_but_the_latest_views(
    champion: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hourly `retention` step: with 30 days nothing of this module's runs goes; with 0 days
    the rows of b1 go (their summary stays, marked), and b2, the newest published run that
    `<p>_predictions_latest` shows, keeps every row (b3 failed and wrote none). A second pass finds
    nothing more to remove."""
    from pipelines.cli import main
    from pipelines.core.settings import RetentionSettings

    before = {r: len(rows_of(champion, r)) for r in ("b1", "b2")}
    kept = run(champion, "retention", "r1", PIPELINE)["batch_predictions"]
    assert (kept["runs"], kept["rows"]) == ([], 0)
    zero = champion.model_copy(update={"retention": RetentionSettings(batch_predictions_days=0)})
    removed = run(zero, "retention", "r2", PIPELINE)["batch_predictions"]
    assert (removed["runs"], removed["rows"]) == (["b1"], before["b1"]) and removed["bytes"] > 0
    again = run(zero, "retention", "r3", PIPELINE)["batch_predictions"]
    assert (again["runs"], again["rows"]) == ([], 0)
    assert rows_of(champion, "b1").empty and len(rows_of(champion, "b2")) == before["b2"] > 0
    with db.connect(champion) as conn:
        latest = conn.execute(f"SELECT count(*) FROM {PIPELINE}_predictions_latest").fetchone()
    assert latest == (before["b2"],)
    assert main(["batch", "show", "--pipeline", PIPELINE]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "table rows removed" in lines[2] and "removed" not in lines[1], lines  # b1's line, not b2's
