"""What a Postgres source's query may be: one read statement. Pure.

The text is split on the semicolons outside string literals (`'...'`, `E'...'`, `$tag$...$tag$`),
quoted identifiers and comments (`--`, nested `/* */`), as PostgreSQL's own lexer reads them, so
`SELECT 1; DROP TABLE x` is refused before anything runs; a trailing semicolon is taken. The one
statement must be a read: `SELECT`, `WITH ... SELECT`, `VALUES` or `TABLE` (a write inside a `WITH`
is refused by the source's READ ONLY transaction, `COPY ... TO PROGRAM` here).
"""

from __future__ import annotations

import re

READS = ("select", "with", "values", "table")
_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def _word(c: str) -> bool:
    """A character of a word (a `$` after one is part of a name, not a dollar quote). Pure."""
    return c.isalnum() or c == "_"


def _skip_quoted(sql: str, i: int, quote: str, backslash: bool) -> int:
    """The index after the literal or identifier that opens at `i`. Pure."""
    j = i + 1
    while j < len(sql):
        if backslash and sql[j] == "\\":
            j += 2
            continue
        if sql[j] == quote:
            if j + 1 < len(sql) and sql[j + 1] == quote:  # a doubled quote stands for itself
                j += 2
                continue
            return j + 1
        j += 1
    return j


def _skip_block_comment(sql: str, i: int) -> int:
    depth, j = 0, i
    while j < len(sql):
        if sql.startswith("/*", j):
            depth, j = depth + 1, j + 2
        elif sql.startswith("*/", j):
            depth, j = depth - 1, j + 2
            if depth == 0:
                return j
        else:
            j += 1
    return j


def statements(sql: str) -> list[str]:
    """The statements of `sql`, comments blanked, empty ones (a trailing `;`) dropped. Pure."""
    out: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(sql):
        c = sql[i]
        if c == ";":
            out.append("".join(current))
            current, i = [], i + 1
            continue
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = len(sql) if end < 0 else end
            current.append(" ")
            continue
        if sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
            current.append(" ")
            continue
        if c in "'\"":
            escaped = c == "'" and i > 0 and sql[i - 1] in "eE" and (i < 2 or not _word(sql[i - 2]))
            end = _skip_quoted(sql, i, c, escaped)
        elif c == "$" and (tag := _DOLLAR.match(sql, i)) and (i == 0 or not _word(sql[i - 1])):
            close = sql.find(tag.group(0), tag.end())
            end = len(sql) if close < 0 else close + len(tag.group(0))
        else:
            end = i + 1
        current.append(sql[i:end])
        i = end
    out.append("".join(current))
    return [s.strip() for s in out if s.strip()]


def query_problem(sql: str) -> str | None:
    """Why a source's query is not one read statement (None: it is). Pure."""
    found = statements(sql)
    if len(found) != 1:
        return (
            f"{len(found)} statements; the Postgres source runs exactly one read statement "
            "(a `;` outside quotes and comments separates statements)"
        )
    first = re.match(r"[(\s]*([A-Za-z]+)", found[0])
    keyword = first.group(1).lower() if first else ""
    if keyword not in READS:
        kind = keyword.upper() or "non-read"
        return f"a {kind} statement; the Postgres source runs one SELECT, WITH, VALUES or TABLE"
    return None
