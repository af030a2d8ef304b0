"""Reading specs: parse a document, load a file or a directory, format validation errors as
`<file>: <dotted.path>: <message>`, and the JSON schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from pipelines.core.errors import SpecError, field_path
from pipelines.core.spec.base import _NAME
from pipelines.core.spec.pipeline import CrossSectionErrors, PipelineSpec


def format_validation_error(err: ValidationError, where: str, data: Any = None) -> str:
    """One line per problem: `<file>: <dotted.path>: <message>`.

    Discriminated-union tags (e.g. `file`, `synthetic`) are dropped from the path so it names the
    field as the user wrote it; given the document (`data`), only where the tag is no key of the
    document there (a contract column named `dataset` keeps its name).
    """
    lines = []
    for e in err.errors():
        cause = e.get("ctx", {}).get("error")
        if isinstance(cause, CrossSectionErrors):
            lines += [f"{where}: {field_path(loc)}: {msg}" for loc, msg in cause.problems]
            continue
        lines.append(f"{where}: {field_path(user_loc(e['loc'], data))}: {e['msg']}")
    return "\n".join(lines)


def user_loc(loc: tuple[int | str, ...], data: Any = None) -> tuple[int | str, ...]:
    """A pydantic error location without its union tags, walking the document beside it: a part is
    a tag where it is one and the document has no such key there. Pure."""
    out: list[int | str] = []
    node = data
    for part in loc:
        present = (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        )
        if isinstance(part, str) and part in _UNION_TAGS and not present:
            continue
        out.append(part)
        node = node[part] if present else None
    return tuple(out)


def union_tags(model: type[BaseModel]) -> frozenset[str]:
    """The tags of every discriminated union in a model's fields, nested models included: pydantic
    puts the tag in an error's location after the union's field (`source.synthetic.customers`). Pure."""
    tags: set[str] = set()
    seen: set[type[BaseModel]] = set()

    def walk(tp: Any, discriminator: str | None) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if discriminator is not None:
                tags.update(get_args(tp.model_fields[discriminator].annotation))
            if tp not in seen:
                seen.add(tp)
                for f in tp.model_fields.values():
                    walk(f.annotation, f.discriminator if isinstance(f.discriminator, str) else None)
        elif get_origin(tp) is Annotated:
            inner, *meta = get_args(tp)
            found = [m.discriminator for m in meta if isinstance(getattr(m, "discriminator", None), str)]
            walk(inner, found[0] if found else discriminator)
        else:
            for arg in get_args(tp):
                walk(arg, discriminator)

    walk(model, None)
    return frozenset(tags)


_UNION_TAGS = union_tags(PipelineSpec)
"""The sources' `kind`s and the search-space parameters' `type`s, read from the union types."""


def parse_spec(data: Any, where: str = "<spec>") -> PipelineSpec:
    """Validate a parsed YAML document into a `PipelineSpec`, or raise `SpecError`."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: a pipeline spec is a YAML mapping, got {type(data).__name__}")
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, where, data)) from None


def load_spec(path: str | Path) -> PipelineSpec:
    """Read and validate one spec file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise SpecError(f"{p}: cannot read the spec: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"{p}: not valid YAML: {err}") from None
    spec = parse_spec(data, str(p))
    if spec.name != p.stem:
        raise SpecError(f"{p}: name: '{spec.name}' must match the file name '{p.stem}'")
    return spec


def spec_paths(directory: str | Path) -> list[Path]:
    """The spec files of a directory, sorted by name."""
    return sorted(p for p in Path(directory).glob("*.yaml") if re.match(_NAME, p.stem))


def read_specs(directory: str | Path) -> tuple[list[PipelineSpec], list[SpecError]]:
    """Every spec of a directory: the valid ones, and apart the error of each invalid one, so one bad
    spec costs only itself (the DAG factory builds the others)."""
    specs: list[PipelineSpec] = []
    errors: list[SpecError] = []
    for path in spec_paths(directory):
        try:
            specs.append(load_spec(path))
        except SpecError as err:
            errors.append(err)
    return specs, errors


def load_specs(directory: str | Path) -> list[PipelineSpec]:
    """Every spec of a directory, or one error naming every invalid spec."""
    specs, errors = read_specs(directory)
    if errors:
        raise SpecError("\n".join(str(e) for e in errors))
    return specs


def json_schema() -> dict[str, Any]:
    """The JSON schema of a pipeline spec (for editors and `mlcycle spec schema`)."""
    return PipelineSpec.model_json_schema()
