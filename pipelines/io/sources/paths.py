"""Where a file source's data is: a path as the platform resolves it (from the project directory),
a window template's fixed part and glob, why a path names no data here, and the folders a run's own
`source_uri` may read from.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.core.errors import InvalidArgument
from pipelines.core.settings import Settings
from pipelines.core.spec import FileSource, Source

if TYPE_CHECKING:
    pass


DATA_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


def local_path(text: str, settings: Settings) -> Path:
    """A file source's path as the platform reads it: `~` expanded, a relative path taken from the
    project directory (`MLCYCLE_PROJECT_DIR`, default the repository root or the image's install
    root), never from the current directory."""
    path = Path(text).expanduser()
    return path if path.is_absolute() else settings.project_dir / path


def fixed_part(template: str) -> str:
    """The part of a path before its first window field (`data/dt={as_of:%Y}.csv` -> `data/dt=`). Pure."""
    return template.split("{", 1)[0]


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


OVERRIDE_DIR = "data"
"""The state directory's folder from which a run's `source_uri` may read any file."""


def override_roots(source: Source, settings: Settings) -> list[Path]:
    """The folders a run's local `source_uri` may read from: `<state dir>/data` and, where the
    spec's own source is a file source, the folder it reads (a directory source: itself; a file or a
    window template: the folder that holds it)."""
    roots = [settings.state_path / OVERRIDE_DIR]
    if isinstance(source, FileSource):
        fixed = fixed_part(source.path)
        spec_path = local_path(fixed or ".", settings)
        templated = fixed != source.path
        roots.append(spec_path if spec_path.is_dir() and not templated else spec_path.parent)
    return roots


def check_override(uri: str, source: Source, settings: Settings) -> None:
    """Refuse a run's local `source_uri` outside `override_roots` (after symlinks are resolved), so
    a run trigger cannot make ingest read any file on the host. An `s3://` URI is not limited
    here: per-pipeline prefixes need the settings of the least-privilege issue (#34)."""
    if uri.startswith("s3://"):
        return
    path = local_path(uri, settings).resolve()
    roots = [r.resolve() for r in override_roots(source, settings)]
    if not any(path.is_relative_to(r) for r in roots):
        allowed = " or ".join(str(r) for r in roots)
        raise InvalidArgument(
            f"source_uri: {uri} is outside the folders a run may read from ({allowed}); copy the file there "
            "or change the spec's source"
        )


def is_data_file(name: str) -> bool:
    """A .csv, .csv.gz, .parquet or .pq file's name. Pure."""
    return name.lower().endswith(DATA_SUFFIXES)
