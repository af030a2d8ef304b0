"""docs/configuration.md is the spec's JSON schema rendered by `mlcycle spec docs`: every section
and field, with its type, default and description; the checked-in file is never stale."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.core.spec import json_schema
from pipelines.core.spec_docs import COMMAND, render

PROJECT = Path(__file__).resolve().parents[2]
REFERENCE = PROJECT / "docs" / "configuration.md"


def test_the_checked_in_reference_is_the_generators_output() -> None:
    assert REFERENCE.read_text() == render(json_schema()), f"stale: run `{COMMAND}` and commit docs/configuration.md"


def test_every_section_and_field_of_the_schema_is_in_the_reference() -> None:
    schema = json_schema()
    text = render(schema)
    for name, section in [("PipelineSpec", schema), *schema["$defs"].items()]:
        assert f"\n## {name}" in text, name
        for field in section.get("properties", {}):
            assert f"| `{field}` |" in text, f"{name}.{field}"


def test_a_field_renders_its_type_default_and_description_and_a_blank_one_stays_blank() -> None:
    schema = {
        "title": "Spec",
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z]+$", "description": "the name | a pipe"},
            "size": {"type": "integer", "minimum": 1, "default": 3},
            "path": {"type": "string", "default": "a", "description": "under <root>, `<root>/a`"},
            "part": {"$ref": "#/$defs/Part", "default": {"kind": "a"}},
        },
        "$defs": {
            "Part": {
                "description": "A part.",
                "properties": {
                    "kind": {"enum": ["a", "b"], "type": "string"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
            }
        },
    }
    text = render(schema)
    assert "| `name` | string (matching `^[a-z]+$`) | required | the name \\| a pipe |" in text
    assert "| `size` | integer (>= 1) | `3` |  |" in text  # no description: a blank cell
    assert "| under &lt;root>, `<root>/a` |" in text  # no HTML tag outside a code span
    assert "| `part` | [Part](#part) | its fields' defaults |  |" in text
    assert "## Part\n\nAt `part`.\n\nA part." in text
    assert '| `kind` | `"a"` or `"b"` | `"a"` |  |' in text  # the default its parent field gives
    assert "| `tags` | list of string |  |  |" in text


def test_spec_docs_check_fails_on_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.cli.commands as commands  # the `spec docs` handler's module

    (tmp_path / "docs").mkdir()
    monkeypatch.setattr(commands, "PROJECT_DIR", tmp_path)
    assert main(["spec", "docs", "--check"]) == 1
    assert main(["spec", "docs"]) == 0
    assert (tmp_path / "docs" / "configuration.md").read_text() == REFERENCE.read_text()
    assert main(["spec", "docs", "--check"]) == 0
