from __future__ import annotations

import pandas as pd
import pytest

from pipelines.core.errors import DataQualityError
from pipelines.core.spec import Split, load_spec
from pipelines.io.featurestore import feast_env, redis_connection_string
from pipelines.steps.features import SPLITS, assign_split, entity_chunks, entity_rows, split_starts, time_split
from tests.conftest import CHURN_SPEC


def test_time_split_orders_and_never_straddles(churn_df: pd.DataFrame) -> None:
    assigned = time_split(churn_df, "event_timestamp", Split())
    ts = churn_df["event_timestamp"]
    ranges = {s: (ts[assigned == s].min(), ts[assigned == s].max()) for s in SPLITS}
    assert ranges["train"][1] < ranges["validation"][0]
    assert ranges["validation"][1] < ranges["test"][0]
    assert (
        churn_df.groupby("event_timestamp").apply(lambda g: assigned[g.index].nunique(), include_groups=False).max()
        == 1
    )
    share = assigned.value_counts(normalize=True)
    assert 0.55 < share["train"] < 0.85


def test_time_split_fine_grained_timestamps_hit_the_fractions() -> None:
    df = pd.DataFrame({"t": pd.date_range("2025-01-01", periods=1000, freq="h", tz="UTC")})
    share = time_split(df, "t", Split(train=0.6, validation=0.2, test=0.2)).value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.6, abs=0.002)
    assert share["test"] == pytest.approx(0.2, abs=0.002)


def test_time_split_refuses_too_few_timestamps() -> None:
    df = pd.DataFrame({"t": pd.to_datetime(["2025-01-01"] * 5 + ["2025-02-01"] * 5, utc=True)})
    with pytest.raises(DataQualityError, match="too few distinct t values"):
        time_split(df, "t", Split())


def test_chunks_cover_every_row_once_in_order_and_a_later_chunk_splits_as_the_whole() -> None:
    assert entity_chunks(0, 3) == [] and entity_chunks(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert entity_chunks(6, 10) == [(0, 6)]
    ts = pd.Series(pd.date_range("2025-01-01", periods=100, freq="D", tz="UTC"), name="t")
    starts = split_starts(ts, Split(train=0.6, validation=0.2, test=0.2))
    whole = assign_split(ts, starts)
    for start, stop in entity_chunks(len(ts), 30):  # each chunk assigned alone, by the same cut points
        assert (assign_split(ts.iloc[start:stop], starts) == whole.iloc[start:stop]).all()
    assert starts == (ts[60], ts[80]) and list(whole.value_counts()[list(SPLITS)]) == [60, 20, 20]


def test_entity_rows(churn_df: pd.DataFrame) -> None:
    spec = load_spec(CHURN_SPEC)
    rows = entity_rows(churn_df, spec)
    assert list(rows.columns) == ["customer_id", "event_timestamp", "churned"]


def test_feast_env_from_a_socket_url() -> None:
    env = feast_env(
        "churn", "postgresql+psycopg://postgres:@/postgres?host=/s/pg", "postgresql://postgres:@/postgres?host=/s/pg"
    )
    assert env["MLCYCLE_FEAST_PG_HOST"] == "/s/pg"
    assert env["MLCYCLE_FEAST_PG_SSLMODE"] == "disable"
    assert env["MLCYCLE_FEAST_PG_PASSWORD"] == ""
    assert env["MLCYCLE_FEAST_PROJECT"] == "churn"


def test_feast_env_from_a_network_url() -> None:
    url = "postgresql://ml:s3cret@db.internal:6543/platform?sslmode=require"
    env = feast_env("churn", url, url)
    assert (env["MLCYCLE_FEAST_PG_HOST"], env["MLCYCLE_FEAST_PG_PORT"]) == ("db.internal", "6543")
    assert (env["MLCYCLE_FEAST_PG_USER"], env["MLCYCLE_FEAST_PG_PASSWORD"]) == ("ml", "s3cret")
    assert env["MLCYCLE_FEAST_PG_DATABASE"] == "platform"
    assert env["MLCYCLE_FEAST_PG_SSLMODE"] == "require"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://redis:6379/0", "redis:6379,db=0"),
        ("redis://:s3cr%40t@redis", "redis:6379,password=s3cr@t"),
        ("rediss://user:pw@cache.example.com:6380/2", "cache.example.com:6380,password=pw,username=user,db=2,ssl=true"),
    ],
)
def test_redis_url_to_feast_connection_string(url: str, expected: str) -> None:
    # every client is bounded in time: a Redis that is down fails a read in seconds
    assert redis_connection_string(url) == expected + ",socket_connect_timeout=2,socket_timeout=30"


@pytest.mark.parametrize("url", ["http://redis:6379", "redis://", "redis://redis/zero"])
def test_bad_redis_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="MLCYCLE_REDIS_URL"):
        redis_connection_string(url)


def test_the_redis_variant_differs_only_in_the_online_store() -> None:
    import yaml

    from pipelines.core.settings import PROJECT_DIR

    repo = PROJECT_DIR / "feature_repo"
    base = yaml.safe_load((repo / "feature_store.yaml").read_text())
    redis = yaml.safe_load((repo / "feature_store.redis.yaml").read_text())
    assert redis.pop("online_store") == {"type": "redis", "connection_string": "${MLCYCLE_FEAST_REDIS}"}
    base.pop("online_store")
    assert redis == base
