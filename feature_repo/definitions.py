"""Feast objects of a pipeline, built from its spec, named by role.

`<entity>` (the entity), `<pipeline>_snapshot_source` (the run's validated Parquet snapshot),
one feature view per `features.views` entry, and the versioned feature service named in the spec
(`churn_features_v1`): the model reads exactly that service, so a new feature set is a new version,
never an edit of a served one. Pure: building objects reads and writes nothing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pipelines.core.spec import PipelineSpec

_FEAST_TYPES = {"int": "Int64", "float": "Float64", "string": "String", "bool": "Bool", "datetime": "UnixTimestamp"}


def build_definitions(spec: PipelineSpec, source_path: str) -> list[Any]:
    """Entity, source, feature views and the feature service of `spec`, on `source_path`."""
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
    from feast import types as ft

    key_type = spec.contract.columns[spec.entity.join_key].dtype
    entity = Entity(
        name=spec.entity.name,
        join_keys=[spec.entity.join_key],
        value_type=ValueType.INT64 if key_type == "int" else ValueType.STRING,
        description=f"the {spec.entity.name} a {spec.name} prediction is about",
    )
    source = FileSource(
        name=f"{spec.name}_snapshot_source",
        path=source_path,
        timestamp_field=spec.entity.timestamp,
        description="the validated snapshot of the lifecycle run that last applied this repo",
    )
    views: list[Any] = [
        FeatureView(
            name=view.name,
            entities=[entity],
            ttl=timedelta(days=view.ttl_days),
            schema=[
                Field(name=f, dtype=getattr(ft, _FEAST_TYPES[spec.contract.columns[f].dtype])) for f in view.features
            ],
            online=True,
            source=source,
            tags={"pipeline": spec.name},
        )
        for view in spec.features.views
    ]
    service = FeatureService(
        name=spec.features.feature_service,
        features=views,
        tags={"pipeline": spec.name},
        description=f"the features the {spec.name} model reads",
    )
    return [entity, source, *views, service]
