"""The local runtime runs the rendered pod's own command: `mlcycle step ...` in a new process."""

from __future__ import annotations

import pytest

from operators.local import LocalProcess
from pipelines.core.pod import container_of, pod_manifest
from pipelines.core.settings import Settings, spec_for
from pipelines.io.storage import open_storage, read_json
from tests.integration.helpers import small_spec

pytestmark = pytest.mark.integration


def test_rendered_pod_command_runs_locally(workspace: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    small_spec(workspace, {"kind": "synthetic", "customers": 300, "months": 6, "seed": 3})
    # What a worker has in its environment reaches the step through the pod's env and the host's.
    monkeypatch.setenv("MLCYCLE_PIPELINES_DIR", str(workspace.pipelines_dir))
    monkeypatch.setenv("MLCYCLE_ARTIFACT_ROOT", str(workspace.artifact_root))
    settings = Settings()
    manifest = pod_manifest(spec_for(settings, "churn"), "ingest", "local-1", settings)
    assert container_of(manifest)["args"] == ["step", "ingest", "--pipeline", "churn", "--run-id", "local-1"]
    lines: list[str] = []
    result = LocalProcess(manifest).run(lines.append)
    stored = read_json(open_storage(settings), "churn/local-1/ingest/manifest.json")
    assert result["content_hash"] == stored["content_hash"]
    assert result["snapshot"] == stored["snapshot"]
    assert any(line.startswith("MLCYCLE_RESULT ") for line in lines)
