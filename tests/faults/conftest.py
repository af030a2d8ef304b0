"""The fault-injection suite on the Compose stack: `make test-faults` (after `make images`). One
stack of its own (the `stack` fixture of tests/stack), two lifecycle runs with faults injected,
a paced serving load around each fault, and one table at the end. What the tests share is a
fixture of tests/stack (`champion`), not module state: each test also passes alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.stack.conftest import ROOT, champion, lifecycle, stack  # noqa: F401 (the fixtures)

ROWS: list[dict[str, str]] = []
COLUMNS = ("fault", "where", "outcome", "requests", "non-2xx", "p99 ms", "recovery s", "data check")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # pytest keeps the file's order: one stack, one story. No test needs it (`champion` makes what
    # the retrain needs when it runs alone), but it is the cheap order: run 1's faults make the
    # first champion, which the retrain then reuses, two lifecycle runs in all.
    for item in items:
        item.add_marker(pytest.mark.timeout(2400))


def table(rows: list[dict[str, str]]) -> str:
    """The rows as a Markdown table. Pure."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r.get(c, "") for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ROWS:
        return
    text = table(ROWS)
    out = Path(ROOT) / ".test-artifacts"
    out.mkdir(exist_ok=True)
    (out / "faults.md").write_text(text + "\n")
    terminalreporter.write_sep("=", "faults injected (also in .test-artifacts/faults.md)")
    for line in text.splitlines():
        terminalreporter.write_line(line)
