"""Embeddings as a model output and the pure core of the vector spaces: the spec's checks, the
ONNX `embedding` output against torch, recall, retention, the similarity query, embedding drift."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pipelines.core.errors import SpecError
from pipelines.core.spec import hidden_widths, parse_spec
from pipelines.io.vectors import expired, index_options, latest_vectors, probes, recall, space_table, vector_text
from pipelines.ml.model import (
    build_module,
    embed_onnx,
    embedding_dimension,
    embeddings,
    fit_encoding,
    onnx_session,
    predict,
    predict_onnx,
    to_onnx,
)
from pipelines.steps.drift import domain_classifier_auc, verdict
from pipelines.steps.embed import batch_bounds, latest_per_entity
from serving.http import similar_query
from tests.specs import churn_spec_dict

NUMERIC = ["tenure_months", "monthly_charges"]
CATEGORICAL = ["plan"]


def test_the_onnx_model_has_an_embedding_output_equal_to_torchs_last_hidden_layer(churn_df: pd.DataFrame) -> None:
    enc = fit_encoding(churn_df, NUMERIC, CATEGORICAL)
    module = build_module(enc, hidden_units=24, layers=2).eval()
    plain = onnx_session(to_onnx(module, enc).SerializeToString())
    with_vectors = onnx_session(to_onnx(module, enc, embedding=True).SerializeToString())
    assert embedding_dimension(plain) is None and embedding_dimension(with_vectors) == 24
    rows = churn_df.head(300)
    vectors = embed_onnx(with_vectors, rows)
    assert vectors.shape == (300, 24) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, embeddings(module, enc, rows), atol=1e-5)
    # the score is the same with or without the extra output, and the vectors are never all zero
    np.testing.assert_allclose(predict_onnx(with_vectors, rows), predict(module, enc, rows), atol=1e-5)
    np.testing.assert_allclose(predict_onnx(with_vectors, rows), predict_onnx(plain, rows), atol=1e-6)
    assert (np.abs(vectors).sum(axis=1) > 0).all()


def test_a_pinned_dimension_must_be_the_only_width_the_search_can_give() -> None:
    assert hidden_widths({}) == {64}
    spec = churn_spec_dict()
    spec["embeddings"] = {"dimension": 32}
    with pytest.raises(SpecError, match=r"embeddings.dimension: 32, but the last hidden layer can be 16..128 wide"):
        parse_spec(spec)
    spec["model"]["search_space"]["hidden_units"] = {"type": "categorical", "choices": [32]}
    assert parse_spec(spec).embeddings.dimension == 32  # type: ignore[union-attr]
    with pytest.raises(SpecError, match="embeddings.distance"):
        parse_spec({**churn_spec_dict(), "embeddings": {"distance": "manhattan"}})


def test_recall_counts_ties_with_the_exact_kth_as_hits() -> None:
    exact = [[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]]
    assert recall([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]], exact, 3) == 1.0
    assert recall([[0.1, 0.2, 0.9], [0.5, 0.5, 0.7]], exact, 3) == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert recall([[], []], exact, 3) == 0.0
    assert recall([[0.1]], [[0.1]], 10) == 1.0  # fewer neighbours than k: as many as there are


def test_spaces_names_index_options_retention_and_served_vectors() -> None:
    assert space_table("churn", 7) == "churn_v7"
    assert index_options("hnsw", 10) == {"m": 16, "ef_construction": 64}
    assert index_options("ivfflat", 500) == {"lists": 1} and index_options("ivfflat", 250_000) == {"lists": 250}
    assert (probes(1), probes(12), probes(250), probes(1000)) == (1, 10, 15, 31)
    now = datetime(2026, 11, 27, tzinfo=UTC)
    retired = [(1, now - timedelta(hours=200)), (2, now - timedelta(hours=10))]
    assert expired(retired, 168, now) == [1] and expired(retired, 0, now) == [1, 2]
    assert vector_text(np.array([0.5, -1.0], dtype=np.float32)) == "[0.5,-1.0]"
    rows = [(1, "a", [1.0]), (1, "a", [2.0]), (2, "a", [3.0])]
    assert latest_vectors(rows) == {1: {"a": [2.0]}, 2: {"a": [3.0]}}


def test_the_backfill_embeds_each_entitys_latest_row_in_batches() -> None:
    df = pd.DataFrame(
        {"id": [1, 2, 1, 3], "ts": pd.to_datetime(["2026-01", "2026-01", "2026-02", "2025-12"]), "x": range(4)}
    )
    latest = latest_per_entity(df, "id", "ts")
    assert latest.set_index("id")["x"].to_dict() == {"3": 3, "2": 1, "1": 2}
    assert batch_bounds(5, 2) == [(0, 2), (2, 4), (4, 5)] and batch_bounds(0, 2) == []


def test_the_similarity_query_string_is_checked() -> None:
    assert similar_query({"entity_id": "42"}) == ("42", 10)
    assert similar_query({"entity_id": "42", "k": "3"}) == ("42", 3)
    for bad, field in (({}, "entity_id"), ({"entity_id": "1", "k": "0"}, "k"), ({"entity_id": "1", "k": "x"}, "k")):
        problems = similar_query(bad)
        assert isinstance(problems, list) and problems[0]["field"] == field
    assert similar_query({"entity_id": "1", "k": "101"})[0]["field"] == "k"  # type: ignore[index]
    assert similar_query({"entity_id": "1", "colour": "red"})[0] == {"field": "colour", "message": "unknown parameter"}  # type: ignore[index]


def test_embedding_drift_is_found_by_a_domain_classifier_and_counts_only_with_a_threshold() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(800, 16))
    assert domain_classifier_auc(reference, rng.normal(size=(800, 16))) < 0.58
    shifted = rng.normal(size=(800, 16)) + np.r_[np.full(4, 0.8), np.zeros(12)]
    assert domain_classifier_auc(reference, shifted) > 0.8
    cfg = parse_spec(churn_spec_dict()).drift
    now = datetime(2026, 11, 27, tzinfo=UTC)
    drifted = {"method": "domain_classifier", "roc_auc": 0.83, "threshold": 0.6, "drifted": True}
    found = verdict(cfg, 1000, {}, 0.01, None, None, now, drifted)
    assert found["retrain"] and "embedding drift" in found["reasons"][0] and "0.830" in found["reasons"][0]
    reported = verdict(cfg, 1000, {}, 0.01, None, None, now, {**drifted, "threshold": None, "drifted": False})
    assert reported["status"] == "ok" and not reported["retrain"]
