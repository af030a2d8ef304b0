"""The configuration reference: a pipeline spec's JSON schema rendered as Markdown.

`mlcycle spec docs` writes it to docs/configuration.md (`--check` says whether the checked-in file is
current; tests/unit/test_spec_docs.py fails while it is not). Pure: it reads the schema that
`pipelines.core.spec.json_schema()` returns and renders every section (a model of the schema's
`$defs`) with every field's type, default and description; a field without a description gets a
blank cell, so the reference is only as good as the schema's descriptions.
"""

from __future__ import annotations

import json
import re
from typing import Any

Schema = dict[str, Any]

COMMAND = "mlcycle spec docs"
"""The one command that regenerates the reference (docs/configuration.md)."""

_REF = "#/$defs/"


def _ref_name(ref: str) -> str:
    return ref.removeprefix(_REF)


def anchor(name: str) -> str:
    """The anchor GitHub gives a heading `## name` (lower case, punctuation dropped, spaces to -)."""
    return re.sub(r"[^a-z0-9 _-]", "", name.lower()).replace(" ", "-")


def _text(text: str) -> str:
    """Prose on one line; outside code spans, a `<` that would open an HTML tag (`<name>`) as `&lt;`."""
    parts = " ".join(text.split()).split("`")
    return "`".join(re.sub(r"<(?=[A-Za-z/!])", "&lt;", p) if i % 2 == 0 else p for i, p in enumerate(parts))


def _cell(text: str) -> str:
    """One table cell: `_text`, with `|` escaped (also inside code spans, as GFM tables need)."""
    return _text(text).replace("|", "\\|")


_BOUNDS = (
    ("minimum", ">= {}"),
    ("exclusiveMinimum", "> {}"),
    ("maximum", "<= {}"),
    ("exclusiveMaximum", "< {}"),
    ("minLength", "at least {} characters"),
    ("maxLength", "at most {} characters"),
    ("minItems", "at least {} items"),
    ("maxItems", "at most {} items"),
    ("minProperties", "at least {} entries"),
    ("pattern", "matching `{}`"),
)


def _bounds(node: Schema) -> str:
    if "minLength" in node and node.get("minLength") == node.get("maxLength"):
        rest = ", ".join(fmt.format(node[k]) for k, fmt in _BOUNDS if k in node and "Length" not in k)
        return ", ".join(filter(None, [f"exactly {node['minLength']} characters", rest]))
    return ", ".join(fmt.format(node[key]) for key, fmt in _BOUNDS if key in node)


def type_of(node: Schema) -> str:
    """A schema node's type in words, a section's name linked to its section."""
    text = _bare_type(node)
    bounds = _bounds(node)
    return f"{text} ({bounds})" if bounds else text


def _bare_type(node: Schema) -> str:
    if "$ref" in node:
        name = _ref_name(node["$ref"])
        return f"[{name}](#{anchor(name)})"
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return " or ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    for union in ("oneOf", "anyOf"):
        if union in node:
            tag = (node.get("discriminator") or {}).get("propertyName")
            options = [type_of(option) for option in node[union]]
            joined = " or ".join(options)
            return f"one of {joined} (by `{tag}`)" if tag else joined
    kind = node.get("type")
    if kind == "array":
        return f"list of {type_of(node['items'])}" if "items" in node else "list"
    if kind == "object":
        values = node.get("additionalProperties")
        if isinstance(values, dict):
            return f"map of string to {type_of(values)}"
        return "mapping"
    return str(kind) if kind else "any value"


def default_of(name: str, node: Schema, required: set[str], given: dict[str, Any]) -> str:
    """The field's default as the spec would write it (or as the field that holds its section gives
    it, in `given`); `required`, or blank when the schema has none."""
    if name in required:
        return "required"
    if "default" not in node and name not in given:
        return ""
    value = node["default"] if "default" in node else given[name]
    if isinstance(value, dict) and value and ("$ref" in node or "anyOf" in node or "oneOf" in node):
        return "its fields' defaults"
    return f"`{json.dumps(value)}`"


def _refs(node: Any) -> list[str]:
    """The sections a node names, in the order it names them."""
    found: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            found.append(_ref_name(node["$ref"]))
        for key, value in node.items():
            if key not in ("discriminator", "default"):
                found.extend(_refs(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_refs(value))
    return found


class _Index:
    """Where each section appears in a spec (field paths such as `contract.columns.<name>`, in the
    order a reader meets them), and the defaults a parent field gives a section's fields."""

    def __init__(self, defs: dict[str, Schema]) -> None:
        self.defs = defs
        self.where: dict[str, list[str]] = {}
        self.defaults: dict[str, dict[str, Any]] = {}

    def fields(self, node: Schema, at: str) -> None:
        for field, sub in (node.get("properties") or {}).items():
            self.walk(sub, f"{at}.{field}" if at else field, "")

    def walk(self, node: Schema, at: str, tag: str) -> None:
        if "$ref" in node:
            name = _ref_name(node["$ref"])
            first = name not in self.where
            place = f"`{at}`" + (f" (`{tag}`)" if tag else "")
            self.where.setdefault(name, [])
            if place not in self.where[name]:
                self.where[name].append(place)
            if isinstance(node.get("default"), dict):
                self.defaults.setdefault(name, node["default"])
            if first:
                self.fields(self.defs[name], at)
            return
        discriminator = node.get("discriminator") or {}
        tags = {ref: f"{discriminator['propertyName']}: {t}" for t, ref in (discriminator.get("mapping") or {}).items()}
        for union in ("oneOf", "anyOf"):
            for option in node.get(union, []):
                self.walk(option, at, tags.get(option.get("$ref", ""), ""))
        if isinstance(node.get("items"), dict):
            self.walk(node["items"], f"{at}[i]", "")
        if isinstance(node.get("additionalProperties"), dict):
            self.walk(node["additionalProperties"], f"{at}.<name>", "")


def _section(title: str, node: Schema, where: list[str], given: dict[str, Any]) -> list[str]:
    lines = [f"## {title}", ""]
    if where:
        lines += ["At " + ", ".join(where) + ".", ""]
    if node.get("description"):
        lines += [_text(node["description"]), ""]
    properties = node.get("properties") or {}
    if not properties:
        return lines
    required = set(node.get("required") or [])
    lines += ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for name, sub in properties.items():
        cells = [f"`{name}`", type_of(sub), default_of(name, sub, required, given), sub.get("description", "")]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return [*lines, ""]


def render(schema: Schema) -> str:
    """The Markdown reference of a spec schema: the spec's own fields, then every section in the
    order a reader meets it (depth first from the top), each with where it appears."""
    defs: dict[str, Schema] = schema.get("$defs") or {}
    index = _Index(defs)
    index.fields(schema, "")
    where = index.where
    order = list(where) + sorted(set(defs) - set(where))  # a section no field names still gets one
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated by `{COMMAND}` from the spec's JSON schema (`mlcycle spec schema`): do not edit. -->",
        "",
        "Every field of a pipeline spec (`include/pipelines/<name>.yaml`), generated from its JSON schema",
        f"(`mlcycle spec schema`; regenerate with `{COMMAND}`). A `required` field has no default; a",
        "blank default is one the spec computes when it loads (an empty list or mapping). How the",
        "sections fit together: [pipelines.md](pipelines.md).",
        "",
        "Sections: " + ", ".join(f"[{name}](#{anchor(name)})" for name in order) + ".",
        "",
    ]
    lines += _section(f"{schema.get('title', 'PipelineSpec')} (the top level)", schema, [], {})
    for name in order:
        lines += _section(name, defs[name], where.get(name, []), index.defaults.get(name, {}))
    return "\n".join(lines).rstrip() + "\n"
