"""The pipeline spec: one YAML document per pipeline, validated into frozen pydantic models.

A spec declares everything the lifecycle needs: where the data comes from, its contract, the
distribution-level expectations, the Feast entity and feature service, the label, the model's
search space and training budget, pod resources per step, the evaluation gates, the canary plan,
the drift thresholds and the schedule. Every model forbids unknown keys, so a typo fails loudly with
the path of the bad field.

One module per concern; this package re-exports the public names, so `from pipelines.core.spec
import X` is the one import a caller needs:

* `sources`: where the data comes from (file, S3, PostgreSQL, synthetic, bundled dataset)
* `contract`: the data contract, expectations, entity, features and splits, the label and its metrics
* `model`: the model families, their parameters and default spaces, the model section, training
* `operations`: resources, evaluation, promotion (approval), canary, serving, drift, embeddings
* `batch`: batch predictions (entities, as_of, outputs, partitions)
* `pipeline`: `PipelineSpec` and the checks between its sections
* `loading`: parse, load and read specs, the error format, the JSON schema
"""

from pipelines.core.families import DEFAULT_HIDDEN_UNITS
from pipelines.core.spec.base import Model
from pipelines.core.spec.batch import Batch, BatchEntities, BatchOutputs, OfflineStoreEntities
from pipelines.core.spec.contract import (
    SPLITS,
    TASK_DEFAULTS,
    TASK_METRICS,
    ColumnContract,
    Contract,
    Entity,
    Expectation,
    Features,
    FeatureView,
    Label,
    LabelKind,
    Split,
)
from pipelines.core.spec.loading import (
    format_validation_error,
    json_schema,
    load_spec,
    load_specs,
    parse_spec,
    read_specs,
    spec_paths,
)
from pipelines.core.spec.model import (
    CategoricalParam,
    Family,
    FloatParam,
    IntParam,
    ModelSpec,
    Param,
    Training,
    default_spaces,
    hidden_widths,
)
from pipelines.core.spec.operations import (
    Autoscaling,
    Canary,
    Drift,
    Embeddings,
    Evaluation,
    ManualWhen,
    Promotion,
    Resources,
    Serving,
    StepResources,
)
from pipelines.core.spec.pipeline import CrossSectionErrors, Loc, PipelineSpec, cross_section_problems
from pipelines.core.spec.sources import (
    DatasetSource,
    FilesBase,
    FileSource,
    PostgresSource,
    S3Source,
    Source,
    SourceBase,
    SyntheticSource,
)
from pipelines.core.steps import STEP_NAMES

__all__ = [
    "DEFAULT_HIDDEN_UNITS",
    "SPLITS",
    "STEP_NAMES",
    "TASK_DEFAULTS",
    "TASK_METRICS",
    "Autoscaling",
    "Batch",
    "BatchEntities",
    "BatchOutputs",
    "Canary",
    "CategoricalParam",
    "ColumnContract",
    "Contract",
    "CrossSectionErrors",
    "DatasetSource",
    "Drift",
    "Embeddings",
    "Entity",
    "Evaluation",
    "Expectation",
    "Family",
    "FeatureView",
    "Features",
    "FileSource",
    "FilesBase",
    "FloatParam",
    "IntParam",
    "Label",
    "LabelKind",
    "Loc",
    "ManualWhen",
    "Model",
    "ModelSpec",
    "OfflineStoreEntities",
    "Param",
    "PipelineSpec",
    "PostgresSource",
    "Promotion",
    "Resources",
    "S3Source",
    "Serving",
    "Source",
    "SourceBase",
    "Split",
    "StepResources",
    "SyntheticSource",
    "Training",
    "cross_section_problems",
    "default_spaces",
    "format_validation_error",
    "hidden_widths",
    "json_schema",
    "load_spec",
    "load_specs",
    "parse_spec",
    "read_specs",
    "spec_paths",
]
