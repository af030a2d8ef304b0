"""The request parser and the request log's row checks: no JSON value a client sends can make the
endpoint fail (5xx) or reach the request log as `ok` while it breaks the contract, and no row can
stop the log."""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipelines.core.spec import parse_spec
from serving.config import FeatureRuleArgs, ServingArgs, VersionConfig
from serving.contract import (
    FeatureRule,
    Judged,
    RequestContract,
    contract_args,
    contract_from_args,
    entity_problem,
    judge_value,
    request_contract,
)
from serving.http import PredictRequest, judge_instances, request_id_of
from serving.records import COLUMNS, Instance, LogRow, storable_features
from serving.telemetry import isolate, serialize_row
from tests.specs import churn_spec_dict

RULES = {
    "tenure_months": FeatureRule("tenure_months", "integer", low=0, high=600),
    "usage": FeatureRule("usage", "number", nullable=True, low=0, high=744),
    "plan": FeatureRule("plan", "category", allowed=frozenset({"basic", "pro"})),
    "region": FeatureRule("region", "category", nullable=True),
}
CONTRACT = RequestContract(RULES)


def _messages(judged: Judged | list[Any]) -> list[str]:
    assert isinstance(judged, list), judged
    return [p.message for p in judged]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (math.nan, "usage: not a finite number (nan)"),
        (math.inf, "usage: not a finite number (inf)"),
        (-math.inf, "usage: not a finite number (-inf)"),
        (10**400, "usage: not a finite number (too large)"),
        ("NaN", "usage: not a number ('NaN')"),
        ("4", "usage: not a number ('4')"),
        (True, "usage: not a number (True)"),
        ([1], "usage: not a number ([1])"),
        (-1, "usage: -1 is below the minimum 0"),
        (745.5, "usage: 745.5 is above the maximum 744"),
    ],
)
def test_a_numeric_feature_takes_a_finite_number_in_range_only(value: Any, message: str) -> None:
    assert _messages(CONTRACT.judge(0, {"usage": value})) == [message]


def test_integers_categories_nulls_and_unknown_names_are_judged_by_the_contract() -> None:
    assert _messages(CONTRACT.judge(0, {"tenure_months": 2.5})) == ["tenure_months: not an integer (2.5)"]
    assert CONTRACT.judge(0, {"tenure_months": 3.0}) == Judged({"tenure_months": 3.0})
    assert _messages(CONTRACT.judge(0, {"plan": "platinum"})) == ["plan: 'platinum' is not one of basic, pro"]
    assert _messages(CONTRACT.judge(0, {"plan": 7})) == ["plan: not a string (7)"]
    assert _messages(CONTRACT.judge(0, {"plan": None})) == [
        "plan: null, but the contract does not allow nulls for this feature"
    ]
    assert CONTRACT.judge(0, {"usage": None, "region": None}) == Judged({"usage": None, "region": None})
    assert CONTRACT.judge(0, {"region": "anything"}) == Judged({"region": "anything"})  # no `allowed`: any text
    problems = CONTRACT.judge(3, {"colour": 1, "plan": "basic", "usage": "x"})
    assert isinstance(problems, list)
    assert [p.field for p in problems] == ["instances[3].features.colour", "instances[3].features.usage"]
    assert problems[0].message.startswith("'colour': unknown feature (the model takes plan, region, tenure_months")


def test_unknown_categories_can_be_scored_and_flagged_instead() -> None:
    scoring = RequestContract(RULES, "score")
    judged = scoring.judge(0, {"plan": "platinum", "tenure_months": 4})
    assert judged == Judged({"plan": "platinum", "tenure_months": 4}, "plan: unknown category 'platinum'")
    assert _messages(scoring.judge(0, {"plan": 7})) == ["plan: not a string (7)"]  # a non-string is never scored


def test_text_must_be_storable_and_bounded() -> None:
    assert judge_value(RULES["region"], "a\x00b", "refuse")[1] == "contains a NUL character"
    assert judge_value(RULES["region"], "\ud800", "refuse")[1] == "is not valid Unicode text (a lone surrogate)"
    assert judge_value(RULES["region"], "x" * 257, "refuse")[1] == "longer than 256 characters (257)"
    assert entity_problem(2**63) == "an integer outside the 64-bit range"
    assert entity_problem("") == "must not be empty" and entity_problem(True) is not None
    assert entity_problem(42) is None and entity_problem("cust-42") is None


def test_the_contract_comes_from_the_spec_and_travels_in_the_apps_arguments() -> None:
    spec = parse_spec(churn_spec_dict())
    features = spec.model.numeric_features + spec.model.categorical_features
    contract = request_contract(spec, features)
    assert contract.rules["tenure_months"] == FeatureRule("tenure_months", "integer", False, 0, 600)
    assert contract.rules["plan"].allowed == frozenset({"basic", "standard", "premium"})
    args = ServingArgs(
        pipeline="churn",
        model_name="m",
        entity_key="customer_id",
        features=features,
        versions=[VersionConfig(version=1, weight=100)],
        contract=contract_args(contract),
    )
    rules = {n: FeatureRuleArgs.model_validate(r.model_dump()) for n, r in args.contract.items()}
    assert contract_from_args(rules, "refuse") == contract


def test_the_request_id_is_the_headers_uuid_or_a_new_one() -> None:
    given_id = uuid.uuid4()
    assert request_id_of(str(given_id)) == given_id
    assert request_id_of("x" * 10_000) != request_id_of("x" * 10_000)  # never echoed: a new one each time
    assert isinstance(request_id_of(None), uuid.UUID) and isinstance(request_id_of("not-a-uuid"), uuid.UUID)


# ---------------------------------------------------------------------------------- properties
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=300),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)
NAMES = st.sampled_from([*RULES, "unknown", ""])


def _row(inst: Instance, **changes: Any) -> LogRow:
    row = LogRow(
        request_id=uuid.uuid4(),
        pipeline="p",
        model_version=1,
        entity_id=str(inst.entity_id),
        features=storable_features(inst.features),
        score=0.5,
        latency_ms=1.0,
        status="ok",
        error=None,
        shadow=False,
        created_at=datetime.now(UTC),
        position=inst.position,
        off_contract=inst.off_contract,
    )
    return dataclasses.replace(row, **changes)


def _conforms(rule: FeatureRule, value: Any, flagged: bool) -> bool:
    if value is None:
        return rule.nullable
    if rule.kind == "category":
        return isinstance(value, str) and (rule.allowed is None or value in rule.allowed or flagged)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return ok and (rule.low is None or value >= rule.low) and (rule.high is None or value <= rule.high)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entity=JSON_VALUES,
    features=st.dictionaries(NAMES, JSON_VALUES, max_size=5),
    unknown=st.sampled_from(["refuse", "score"]),
)
def test_any_json_in_any_feature_is_refused_or_conforms_and_makes_a_storable_row(
    entity: Any, features: dict[str, Any], unknown: str
) -> None:
    """The whole parser on bytes a client could send: a pydantic error (422) or judged instances
    (problems: 422; instances: scored), never an exception; what passes conforms to the contract
    and its log row serializes as strict JSON that PostgreSQL takes."""
    body = json.dumps({"instances": [{"entity_id": entity, "features": features}]}, allow_nan=True)
    try:
        payload = PredictRequest.model_validate_json(body)
    except ValidationError:
        return
    out = judge_instances(payload, RequestContract(RULES, unknown))  # type: ignore[arg-type]
    if out and isinstance(out[0], dict):
        assert all(isinstance(p, dict) and p["field"].startswith("instances[0]") and p["message"] for p in out)
        return
    (inst,) = out
    assert isinstance(inst, Instance)
    for name, value in inst.features.items():
        assert _conforms(RULES[name], value, inst.off_contract is not None), (name, value)
    assert not isinstance(serialize_row(_row(inst)), str)


# ------------------------------------------------------------------------------ the log's rows
def test_a_row_that_cannot_be_stored_is_named_with_its_reason() -> None:
    good = Instance(1, {"usage": 3.0})
    ready = serialize_row(_row(good))
    assert isinstance(ready, tuple) and json.loads(ready[COLUMNS.index("features")]) == {"usage": 3.0}
    nan = serialize_row(_row(Instance(1, {"usage": math.nan})))
    assert isinstance(nan, tuple) and json.loads(nan[COLUMNS.index("features")]) == {"usage": None}
    inf = serialize_row(_row(good, features={"usage": math.inf}))
    assert inf == "features: Out of range float values are not JSON compliant"
    nul = serialize_row(_row(good, features={"note": "a\x00b"}))
    assert nul == "features: a NUL character (PostgreSQL's jsonb refuses it)"
    assert serialize_row(_row(good, entity_id="\ud800")) == "entity_id: a lone surrogate (not UTF-8)"


def test_a_refused_batch_is_bisected_until_each_bad_row_stands_alone() -> None:
    written: list[int] = []
    calls = []

    def write(rows: list[tuple[Any, ...]]) -> None:
        calls.append(len(rows))
        bad = [r[0] for r in rows if r[0] in (3, 11)]
        if bad:
            raise psycopg.errors.CheckViolation(f"row {bad[0]} violates check constraint")
        written.extend(r[0] for r in rows)

    dead = isolate([(n,) for n in range(16)], write)
    assert [(row, reason) for row, reason in dead] == [
        ((3,), "row 3 violates check constraint"),
        ((11,), "row 11 violates check constraint"),
    ]
    assert sorted(written) == [n for n in range(16) if n not in (3, 11)]
    assert len(calls) <= 2 * 2 * 4 + 1  # about 2 log2(n) writes per bad row

    def down(rows: list[tuple[Any, ...]]) -> None:
        raise psycopg.OperationalError("server closed the connection")

    with pytest.raises(psycopg.OperationalError):  # not the data's fault: the batch is kept, not split
        isolate([(1,), (2,)], down)
