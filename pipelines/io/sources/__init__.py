"""Source readers: a spec's (or a labels load's) source read into a frame, with clear errors for
missing, empty, truncated or malformed input. Files (or a directory of them), S3 objects (or every
object under a prefix), Postgres queries (the window as bound parameters), synthetic data.

With a window (`pipelines.core.window`), a location template is rendered for it and the rows are
kept by the entity timestamp: `(start, end]`. A row whose timestamp cannot be read is kept, so
that validation sees it and says so.

One module per concern; this package re-exports the public names, so `from pipelines.io.sources
import X` is the one import a caller needs:

* `readers`: `read_source` and the reader of each kind (Postgres, synthetic, bundled dataset)
* `files`: the files and S3 objects a source names, read as CSV or Parquet in chunks
* `paths`: a file source's paths as the platform resolves them, the folders a run may read from
* `frames`: the window applied to rows, the frames gathered into one, feedback rows
"""

from pipelines.io.sources.files import (
    CHUNK_ROWS,
    DELIMITERS,
    SPOOL_BYTES,
    DataFile,
    delimiter_hint,
    file_frames,
    index_as_columns,
    infer_format,
)
from pipelines.io.sources.frames import (
    columns_differ,
    columns_text,
    feedback_frame,
    gather,
    in_window,
    instants,
    no_column_text,
    normalize_frame,
    widened,
    within,
)
from pipelines.io.sources.paths import (
    DATA_SUFFIXES,
    OVERRIDE_DIR,
    check_override,
    file_source_problem,
    fixed_part,
    local_path,
    template_glob,
)
from pipelines.io.sources.readers import (
    read_source,
    synthetic_config,
)

__all__ = [
    "CHUNK_ROWS",
    "DATA_SUFFIXES",
    "DELIMITERS",
    "OVERRIDE_DIR",
    "SPOOL_BYTES",
    "DataFile",
    "check_override",
    "columns_differ",
    "columns_text",
    "delimiter_hint",
    "feedback_frame",
    "file_frames",
    "file_source_problem",
    "fixed_part",
    "gather",
    "in_window",
    "index_as_columns",
    "infer_format",
    "instants",
    "local_path",
    "no_column_text",
    "normalize_frame",
    "read_source",
    "synthetic_config",
    "template_glob",
    "widened",
    "within",
]
