"""Fail when a tracked file holds a secret the reviewed baseline does not list.

`detect-secrets-hook --baseline` also fails when a reviewed secret only moved
to another line (it rewrites the baseline and exits 1), which turned every edit
above a test fixture into a red CI. Here the baseline is rescanned into a
temporary copy and compared by (file, hashed secret): a moved line passes, a new
secret fails with its file and line, and the committed baseline is untouched.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def findings(baseline: Path) -> dict[tuple[str, str], str]:
    results = json.loads(baseline.read_text())["results"]
    return {
        (name, item["hashed_secret"]): f"{item['line_number']}: {item['type']}"
        for name, items in results.items()
        for item in items
    }


def main() -> int:
    committed = Path(".secrets.baseline")
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "baseline.json"
        shutil.copyfile(committed, fresh)
        # `scan --baseline` rescans the tracked files with the baseline's own
        # plugins and filters and keeps its reviewed labels.
        subprocess.run(
            [sys.executable, "-m", "detect_secrets", "scan", "--baseline", str(fresh)],
            check=True,
            capture_output=True,
        )
        now = findings(fresh)
    # the copy lies outside the tree, so the committed baseline is scanned as a
    # tracked file: its own hashes are not secrets
    new = {key for key in now.keys() - findings(committed).keys() if key[0] != str(committed)}
    if not new:
        return 0
    for name, hashed in sorted(new):
        print(f"{name}:{now[(name, hashed)]}: not in the reviewed baseline", file=sys.stderr)
    print(
        "review it; if it is a false positive, regenerate the baseline:\n"
        "  detect-secrets scan $(git ls-files | grep -vx .secrets.baseline) > .secrets.baseline",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
