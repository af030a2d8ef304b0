"""A Postgres source's query: one read statement, split as PostgreSQL's lexer reads it (pure)."""

from __future__ import annotations

import pytest

from pipelines.core.errors import SpecError
from pipelines.core.spec import parse_spec
from pipelines.core.sql import query_problem, statements
from tests.specs import churn_spec_dict


def test_statements_split_on_semicolons_outside_literals_identifiers_and_comments() -> None:
    assert statements("SELECT 1; DROP TABLE x") == ["SELECT 1", "DROP TABLE x"]
    assert statements("SELECT 1;\n  -- done\n") == ["SELECT 1"]  # a trailing `;` and a comment: one
    assert statements("SELECT ';' AS a, 'it''s;' AS b") == ["SELECT ';' AS a, 'it''s;' AS b"]
    assert statements('SELECT 1 AS ";"') == ['SELECT 1 AS ";"']
    assert statements("SELECT E'\\';' AS a") == ["SELECT E'\\';' AS a"]  # a backslash-escaped quote
    assert statements("SELECT $f$ ; $f$, $$;$$") == ["SELECT $f$ ; $f$, $$;$$"]
    assert len(statements("SELECT 1 /* ; /* nested ; */ ; */ ; COMMIT")) == 2
    assert len(statements("SELECT 1 -- ; not here\n; DELETE FROM x")) == 2
    assert len(statements("SELECT 'a' ';' ; DELETE FROM x")) == 2
    assert len(statements("SELECT 1 WHERE 'x' = 'x';COMMIT;SET ROLE postgres")) == 3


def test_only_one_read_statement_is_a_source_query() -> None:
    assert query_problem("SELECT * FROM t WHERE ts > %(start)s") is None
    assert query_problem("  (SELECT 1) UNION (SELECT 2);") is None
    assert query_problem("WITH a AS (SELECT 1) SELECT * FROM a") is None
    assert query_problem("VALUES (1)") is None and query_problem("TABLE t") is None
    assert query_problem("SELECT 1; DROP TABLE x") == (
        "2 statements; the Postgres source runs exactly one read statement "
        "(a `;` outside quotes and comments separates statements)"
    )
    assert query_problem("COPY (SELECT 1) TO PROGRAM 'id'") == (
        "a COPY statement; the Postgres source runs one SELECT, WITH, VALUES or TABLE"
    )
    assert query_problem("/* x */ DELETE FROM t RETURNING *") is not None
    assert query_problem(";") is not None and query_problem("-- nothing") is not None


def test_the_spec_refuses_a_query_of_several_statements() -> None:
    bad = churn_spec_dict(source={"kind": "postgres", "query": "SELECT 1; COMMIT; DROP TABLE x"})
    with pytest.raises(SpecError, match="3 statements"):
        parse_spec(bad)
