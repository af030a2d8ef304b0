"""Where a file source's data is: a path as the platform resolves it (from the project directory),
a window template's fixed part and glob, why a path names no data here, and the check of a run's own
`source_uri` against the prefixes its pipeline allows (`pipelines.core.uris`), on the host.
"""

from __future__ import annotations

import re

from pipelines.core.errors import InvalidArgument
from pipelines.core.settings import Settings
from pipelines.core.spec import FileSource, PipelineSpec
from pipelines.core.uris import (
    DATA_SUFFIXES,
    OVERRIDE_DIR,
    allowed_prefixes,
    fixed_part,
    is_data_file,
    local_path,
    uri_problem,
)

__all__ = [
    "DATA_SUFFIXES",
    "OVERRIDE_DIR",
    "check_override",
    "file_source_problem",
    "fixed_part",
    "is_data_file",
    "local_path",
    "template_glob",
]


def template_glob(template: str) -> str:
    """A window template as the glob of the files it can name (`dt={as_of:%Y-%m-%d}.csv` ->
    `dt=*.csv`). Pure."""
    return re.sub(r"\{[^{}]*\}", "*", template)


def file_source_problem(source: FileSource, settings: Settings) -> str | None:
    """Why a file source's path names no data on this machine (None: it does), resolved as ingest
    resolves it (`local_path`): a file that does not exist, a directory with no .csv or .parquet
    file, a window template whose folder is missing or matches no file yet."""
    templated = template_glob(source.path) != source.path
    if templated:
        pattern = local_path(template_glob(source.path), settings)
        folder = local_path(fixed_part(source.path) or ".", settings)
        folder = folder if fixed_part(source.path).endswith("/") else folder.parent
        if not folder.is_dir():
            return f"source.path: {source.path}: the folder {folder} does not exist"
        if not any(folder.glob(str(pattern.relative_to(folder)))):
            return f"source.path: {source.path}: no file matches {pattern} yet"
        return None
    path = local_path(source.path, settings)
    where = source.path if str(path) == source.path else f"{source.path} ({path})"
    if path.is_dir():
        if not any(f.is_file() and is_data_file(f.name) for f in path.iterdir()):
            return f"source.path: {where}: the folder holds no .csv or .parquet file"
        return None
    if not path.exists():
        return f"source.path: {where} does not exist (a relative path is read from {settings.project_dir})"
    return None


def check_override(uri: str, spec: PipelineSpec, settings: Settings) -> None:
    """Refuse a run's `source_uri` outside the prefixes its pipeline allows (`pipelines.core.uris`),
    a local one after symlinks are resolved, so a run trigger cannot make ingest read any file on
    the host or another pipeline's objects (InvalidArgument naming `source_uri`)."""
    problem = uri_problem(uri, allowed_prefixes(spec.source, settings, spec.name), settings, resolve=True)
    if problem:
        raise InvalidArgument(problem)
