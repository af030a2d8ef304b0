"""Where a run's `source_uri` (a trigger parameter) may read from: the prefixes a pipeline allows.

A user allowed to trigger one pipeline must not make its ingest read any host file or another
pipeline's objects in the shared bucket. A run's `source_uri` is taken only under:

* `<state dir>/data` (the folder for files handed to one run);
* the spec's own source folder: a file source's folder (a directory source: itself), an S3
  source's prefix (an object: the prefix that holds it);
* the spec's `source.allowed_uris` and the settings' `source_uri_prefixes` (`{pipeline}` stands
  for the pipeline's name);

and never inside the artifact root, whatever the prefixes say. A prefix is a folder: `s3://b/churn`
allows `s3://b/churn/x.csv`, not `s3://b/churn-old/x.csv`. No `..` segment is taken.

The trigger form (the DAG's `params`: `uri_pattern`), the platform API and the ingest step
(`pipelines.io.sources.check_override`, after symlinks are resolved) apply the same prefixes.
Pure: no I/O.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from pipelines.core.settings import Settings
from pipelines.core.spec import FileSource, S3Source, Source

OVERRIDE_DIR = "data"
"""The state directory's folder from which a run's `source_uri` may read any file."""
DATA_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
FIELD = "source_uri"


def local_path(text: str, settings: Settings) -> Path:
    """A file source's path as the platform reads it: `~` expanded, a relative path taken from the
    project directory (`MLCYCLE_PROJECT_DIR`, default the repository root or the image's install
    root), never from the current directory."""
    path = Path(text).expanduser()
    return path if path.is_absolute() else settings.project_dir / path


def fixed_part(template: str) -> str:
    """The part of a path before its first window field (`data/dt={as_of:%Y}.csv` -> `data/dt=`). Pure."""
    return template.split("{", 1)[0]


def is_data_file(name: str) -> bool:
    """A .csv, .csv.gz, .parquet or .pq file's name. Pure."""
    return name.lower().endswith(DATA_SUFFIXES)


def as_folder(prefix: str) -> str:
    """A prefix as a folder: ending in `/`. Pure."""
    return prefix if prefix.endswith("/") else prefix + "/"


def spec_folder(source: Source, settings: Settings) -> str | None:
    """The spec's own source folder (None for a source with no location: Postgres, synthetic,
    dataset): the folder of a file, window template or object, or the directory or prefix itself."""
    if isinstance(source, S3Source):
        fixed = fixed_part(source.uri)
        return fixed[: fixed.rindex("/") + 1]
    if isinstance(source, FileSource):
        fixed = fixed_part(source.path)
        templated = fixed != source.path
        path = local_path(fixed or ".", settings)
        if templated or fixed.endswith("/") or is_data_file(path.name):
            path = path if fixed.endswith("/") else path.parent
        return os.path.normpath(path)
    return None


def allowed_prefixes(source: Source, settings: Settings, pipeline: str) -> list[str]:
    """Every folder (absolute, normalised) and `s3://` prefix a run's `source_uri` may read from."""
    given = [settings.state_path / OVERRIDE_DIR, spec_folder(source, settings)]
    given += [*source.allowed_uris, *(p.replace("{pipeline}", pipeline) for p in settings.source_uri_prefixes)]
    out: list[str] = []
    for prefix in given:
        if prefix is None:
            continue
        text = str(prefix)
        norm = as_folder(text) if text.startswith("s3://") else os.path.normpath(local_path(text, settings))
        if norm not in out:
            out.append(norm)
    return out


def under(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or inside it (both normalised; `s3://` prefixes as folders). Pure."""
    if folder.startswith("s3://"):
        return path.startswith(as_folder(folder))
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def uri_problem(uri: str, prefixes: Iterable[str], settings: Settings, resolve: bool = False) -> str | None:
    """Why a run may not read `uri` (None: it may): outside every prefix, inside the artifact root,
    a `..` segment in an object key. `resolve` (ingest) follows symlinks on the host first."""
    prefixes = list(prefixes)
    allowed = " or ".join(prefixes)
    if uri.startswith("s3://"):
        if ".." in uri[5:].split("/"):
            return f"{FIELD}: {uri}: a `..` segment is not taken in an object key"
        where = uri
        roots = prefixes
    else:
        path = local_path(uri, settings)
        where = str(path.resolve() if resolve else os.path.normpath(path))
        roots = [str(Path(p).resolve()) if resolve else p for p in prefixes if not p.startswith("s3://")]
    artifacts = settings.artifact_uri
    if not artifacts.startswith("s3://"):
        artifacts = str(Path(artifacts).resolve()) if resolve else os.path.normpath(artifacts)
    if under(where, artifacts):
        return f"{FIELD}: {uri} is inside the artifact root, which no run reads as its source"
    if not any(under(where, root) for root in roots):
        return (
            f"{FIELD}: {uri} is outside the folders and prefixes this pipeline's runs may read from ({allowed}); "
            "copy the data there, or allow its prefix in the spec's `source.allowed_uris`"
        )
    return None


def uri_pattern(prefixes: Iterable[str], settings: Settings, suffix: str) -> str:
    """The JSON-schema pattern of a `source_uri` the trigger form takes: under one of `prefixes`
    (a local folder absolute, or relative to the project dir), no `..` segment, ending in `suffix`
    (a pattern ending in `$`). The same decision as `uri_problem` for a URI without `..`, except
    `~` (written out in the form). Pure."""
    forms: list[str] = []
    for prefix in prefixes:
        if prefix.startswith("s3://"):
            forms.append(re.escape(as_folder(prefix)))
            continue
        forms.append(re.escape(prefix.rstrip("/") + "/"))
        project = str(settings.project_dir).rstrip("/") + "/"
        if prefix.startswith(project):
            forms.append(r"(\./)?" + re.escape(prefix[len(project) :].rstrip("/") + "/"))
    artifacts = as_folder(settings.artifact_uri)
    return rf"^(?!(.*/)?\.\.(/|$))(?!{re.escape(artifacts)})({'|'.join(forms)}).*{suffix}"
