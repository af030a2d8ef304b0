"""How the pipeline runs and is operated: pod resources per step, the evaluation gates, the canary
plan, Ray Serve, the drift check and embeddings."""

from __future__ import annotations

import itertools
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipelines.core.k8s import Toleration
from pipelines.core.spec.base import _K8S_QUANTITY, Model
from pipelines.core.spec.contract import MetricName
from pipelines.core.steps import STEP_NAMES


class Resources(Model):
    """Pod resources of a step: each is requested and limited alike (Guaranteed QoS)."""

    cpu: str = Field(
        default="1", pattern=_K8S_QUANTITY, description="CPUs, as Kubernetes writes them (`1`, `500m`, `2.5`)"
    )
    memory: str = Field(
        default="2Gi", pattern=_K8S_QUANTITY, description="memory, as Kubernetes writes it (`512Mi`, `2Gi`)"
    )
    gpu: int = Field(default=0, ge=0, le=16, description="whole GPUs; above 0 the pod lands on the platform's GPU pool")
    gpu_resource: str | None = Field(
        default=None,
        description="the GPU's extended resource; default: the platform's (nvidia.com/gpu, or the chart's)",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="more labels, on top of the platform's GPU pool (avoid naming cluster labels)"
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="more tolerations, on top of the GPU taint's the platform adds"
    )


class StepResources(Model):
    """Resources per step; a step without its own entry uses `default`."""

    default: Resources = Field(default=Resources(), description="the resources of every step not named in `steps`")
    steps: dict[str, Resources] = Field(
        default_factory=dict,
        description="a step's own resources, by step name (`train` with a GPU, say); `trials` falls back to `train`'s",
    )

    @field_validator("steps")
    @classmethod
    def _known_steps(cls, v: dict[str, Resources]) -> dict[str, Resources]:
        unknown = sorted(set(v) - set(STEP_NAMES))
        if unknown:
            raise ValueError(f"unknown steps {unknown}; steps are {list(STEP_NAMES)}")
        return v

    def for_step(self, step: str) -> Resources:
        """A step's resources; a trial worker has the train step's unless it has its own."""
        if step in self.steps:
            return self.steps[step]
        if step == "trials" and "train" in self.steps:
            return self.steps["train"]
        return self.default


class Evaluation(Model):
    """The promotion gates."""

    primary_metric: MetricName = Field(
        default="roc_auc",
        description="the metric the search optimises and the gates judge, one of the label kind's; "
        "default: roc_auc for a binary label (pr_auc where its training positive rate is at most "
        "`training.imbalance_rate` and `min_primary` is not set either), "
        "macro_f1 for a multiclass one, rmse for a regression one",
    )
    min_primary: float | None = Field(
        default=0.6,
        description="the bound the primary metric must meet (a minimum, or a maximum where lower is better); "
        "default: 0.6 for a binary label judged by roc_auc, none for one judged by pr_auc by default (setting "
        "it keeps roc_auc: the bound is read as the documented default's), none for a multiclass or regression one",
    )
    min_improvement: float = Field(
        default=0.0,
        description="the gain over the champion's primary metric the challenger needs on the same test rows, in "
        "the metric's units (positive is better); 0: better with confidence; negative: no worse than this margin",
    )
    beat_baseline: bool = Field(
        default=True,
        description="the challenger's primary metric must beat a trivial model's on the same test rows: the "
        "training class prior for a binary label, the majority class for a multiclass one, the training mean "
        "for a regression one (a chance-level model is never promoted)",
    )
    bootstrap_samples: int = Field(
        default=500, ge=50, description="resamples of the test rows behind the challenger-champion interval"
    )
    confidence: float = Field(
        default=0.95, gt=0.5, lt=1.0, description="the level of that interval (0.95: a 95 % interval)"
    )
    threshold: float | Literal["tuned"] = Field(
        default="tuned",
        description="a binary model's decision threshold on the probability (`score >= threshold` decides 1): "
        "`tuned` chooses it on the validation rows where the model's F1 is highest, and the version is served "
        "with it (each answer's `class`); a number in (0, 1) fixes it",
    )
    slices: list[str] = Field(
        default_factory=list,
        description="columns whose values get metrics of their own in the report (values under 30 rows skipped)",
    )
    max_latency_ms_per_row: float | None = Field(
        default=None, gt=0.0, description="a gate on the ONNX model's scoring time per test row, ms; default: none"
    )
    onnx_parity_tolerance: float = Field(
        default=1e-4,
        gt=0.0,
        description="the largest difference between ONNX and the model's own scores; for a regression label, "
        "relative to the largest score's magnitude",
    )

    def for_positive_rate(self, kind: str, rate: float | None, imbalance_rate: float) -> Evaluation:
        """The evaluation of a label of this kind whose training split has this positive rate:
        `pr_auc` (and no `min_primary`) for a rare positive class (at most
        `training.imbalance_rate`: ROC AUC hides how a rare class is ranked), where the document
        sets neither `primary_metric` nor `min_primary`. Pure."""
        rare = kind == "binary" and rate is not None and rate <= imbalance_rate
        return self.judged_by("pr_auc") if rare else self

    def judged_by(self, metric: str) -> Evaluation:
        """This evaluation with the primary metric a run chose by default (`for_positive_rate`), by
        its name or a version's `mlcycle.primary_metric` tag (`pr_auc=0.4123`); a metric the
        document sets stays. Pure."""
        metric = metric.partition("=")[0]
        # a bound the document sets was written for the metric it documents (roc_auc): it stays so
        chosen = {"primary_metric", "min_primary"} & self.model_fields_set
        if chosen or metric == self.primary_metric or metric != "pr_auc":
            return self
        # no bound: the prior's PR AUC is the positive rate, so beat_baseline judges chance
        return self.model_copy(update={"primary_metric": metric, "min_primary": None})

    @field_validator("threshold")
    @classmethod
    def _threshold_in_range(cls, v: float | str) -> float | str:
        if not isinstance(v, str) and not 0.0 < v < 1.0:
            raise ValueError(f"threshold: {v} is not in (0, 1); give a probability or `tuned`")
        return v


class ManualWhen(Model):
    """Conditions under which a run waits for a person even with `approval: auto`; none set: never."""

    primary_gain_below: float | None = Field(
        default=None,
        description="the challenger's gain over the champion's primary metric on the same test rows is below this, "
        "in the metric's units (positive is better; 0.01: less than a hundredth of ROC AUC)",
    )
    slice_worse: bool = Field(
        default=False,
        description="a slice (evaluation.slices) where the challenger's primary metric is worse than the "
        "champion's by more than `slice_margin`",
    )
    slice_margin: float = Field(
        default=0.0, ge=0.0, description="how much worse a slice may be before `slice_worse` counts it, metric units"
    )
    first_model: bool = Field(default=False, description="the pipeline has no champion yet (its first model)")

    def any(self) -> bool:
        """Whether any condition is set."""
        return self.primary_gain_below is not None or self.slice_worse or self.first_model


class Promotion(Model):
    """Who lets a challenger that passed its gates be promoted: the lifecycle, or a person."""

    approval: Literal["auto", "manual"] = Field(
        default="auto",
        description="`manual`: after `evaluate`, the run waits in Airflow's Required actions until a person "
        "approves (promote runs) or rejects (promote and canary skip, the reason recorded); `auto`: promote "
        "follows the gates, unless a `manual_when` condition holds",
    )
    manual_when: ManualWhen = Field(
        default=ManualWhen(), description="with `approval: auto`, the conditions under which a person decides anyway"
    )
    approval_timeout_h: float = Field(
        default=72.0,
        gt=0.0,
        le=24 * 90,
        description="hours the approval waits for a person; then the challenger is rejected (and audited so)",
    )

    def asks_for_approval(self) -> bool:
        """Whether the lifecycle DAG has an approval task (manual, or auto with conditions)."""
        return self.approval == "manual" or self.manual_when.any()


class Canary(Model):
    """The canary plan: traffic percentages with a dwell time each (or a shadow window), and the SLOs."""

    mode: Literal["weighted", "shadow"] = Field(
        default="weighted",
        description="`weighted`: the challenger answers a growing share of traffic (`steps`); `shadow`: it gets a "
        "copy of every request and never answers, the champion answers all, and at the end of the window "
        "(`shadow_hours` or `shadow_requests`, whichever comes first) a comparison decides by the same SLOs",
    )
    shadow_hours: float = Field(
        default=24.0, gt=0.0, le=168.0, description="the longest a shadow window lasts, hours (mode `shadow`)"
    )
    shadow_requests: int = Field(
        default=1000,
        ge=1,
        le=10_000_000,
        description="the shadow's answers (one per instance) after which the window ends early (mode `shadow`)",
    )
    min_agreement: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="a shadow run's least share of requests where the challenger agrees with the champion: the same "
        "class (a binary label: the same decision, each version at its own threshold), or for a regression label a "
        "difference within `agreement_tolerance`; under it the challenger is rejected",
    )
    agreement_tolerance: float = Field(
        default=0.1,
        gt=0.0,
        description="a regression label's largest difference between the two answers that still agrees, in the "
        "champion's standard deviations of its scores over the window",
    )
    steps: list[int] = Field(
        default_factory=lambda: [5, 25, 50, 100],
        min_length=1,
        description="the challenger's share of traffic at each step, percent, increasing and ending at 100",
    )
    dwell_s: float = Field(default=60.0, gt=0.0, description="seconds each step lasts before it is judged")
    min_requests: int = Field(
        default=50,
        ge=1,
        description="challenger requests a step needs before it is judged; the last step without them rolls back",
    )
    max_error_rate: float = Field(
        default=0.01, ge=0.0, le=1.0, description="the challenger's largest share of failed requests (0.01: 1 %)"
    )
    max_p99_latency_ms: float = Field(
        default=250.0, gt=0.0, description="the challenger's largest 99th-percentile latency, ms"
    )
    max_score_shift: float = Field(
        default=0.2,
        gt=0.0,
        description="the largest move of the challenger's answers from the champion's: the predicted classes' "
        "shares (total variation) for a multiclass label, or a binary one whose versions both decide at a "
        "threshold of their own; else the mean score, a probability for a binary label, champion standard "
        "deviations for a regression one; judged at 95 % confidence (the shift's lower bound)",
    )

    @field_validator("steps")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(not 0 < s <= 100 for s in v):
            raise ValueError("every step is a percentage in (0, 100]")
        if any(b <= a for a, b in itertools.pairwise(v)):
            raise ValueError("steps must increase")
        if v[-1] != 100:
            raise ValueError("the last step must be 100")
        return v


class Autoscaling(Model):
    """Ray Serve's autoscaling of the application's deployments (the ingress, and each version's where
    `version_deployments` is on): Serve adds a replica while the replicas hold more than
    `target_ongoing_requests` each, and removes one while they hold fewer; on a cluster, KubeRay's
    autoscaler adds the Ray workers the replicas need."""

    min_replicas: int = Field(
        default=1,
        ge=1,
        le=64,
        description="replicas kept when idle, and started with (at least 1: HAProxy routes to a replica, so "
        "there is no scale to zero)",
    )
    max_replicas: int = Field(default=4, ge=1, le=64, description="the most replicas Serve starts under load")
    target_ongoing_requests: float = Field(
        default=16.0,
        gt=0.0,
        le=4096.0,
        description="requests a replica should hold at once (being answered or waiting for their batch); above "
        "it Serve adds replicas, below it removes them; below `max_concurrent_requests`, where a replica sheds",
    )
    upscale_delay_s: float = Field(
        default=30.0, ge=0.0, le=3600.0, description="how long the load must stay above the target before Serve adds"
    )
    downscale_delay_s: float = Field(
        default=600.0,
        ge=0.0,
        le=86400.0,
        description="how long the load must stay below the target before Serve removes a replica",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"serving.autoscaling: min_replicas ({self.min_replicas}) is above max_replicas "
                f"({self.max_replicas}); make max_replicas at least min_replicas"
            )
        return self


class Serving(Model):
    """Ray Serve settings of the pipeline's application."""

    max_batch_size: int = Field(
        default=32, ge=1, description="a batch takes what queued while the previous one ran, up to this many"
    )
    version_deployments: bool = Field(
        default=False,
        description="each version in a Serve deployment of its own (its own resources, e.g. a GPU replica); "
        "default: the versions are scored in the ingress's process (one hop)",
    )
    max_payload_bytes: int = Field(
        default=1_048_576, ge=1024, description="the largest request body, bytes; a larger one is answered 413"
    )
    max_concurrent_requests: int = Field(
        default=128,
        ge=1,
        le=4096,
        description="requests a replica holds at once (being answered or waiting for their batch); past it "
        "the endpoint answers 503 with Retry-After at once instead of queueing without bound",
    )
    replicas: int = Field(
        default=1,
        ge=1,
        description="Serve replicas of the application's deployments, fixed; ignored where `autoscaling` is set",
    )
    autoscaling: Autoscaling | None = Field(
        default=None,
        description="Serve's autoscaling of the replicas between a minimum and a maximum; absent: `replicas`, fixed",
    )
    gpus: float = Field(
        default=0.0,
        ge=0.0,
        le=8.0,
        description="GPUs per replica (a fraction shares one): the replica lands on a Ray GPU worker and scores with "
        "ONNX Runtime's CUDA provider; without a usable one it scores on the CPU and logs why",
    )
    request_timeout_s: float = Field(
        default=2.0, gt=0.0, description="a version that has not answered by then races the fallback version"
    )
    request_deadline_s: float = Field(default=30.0, gt=0.0, description="when the ingress gives up (503)")
    unknown_categories: Literal["refuse", "score"] = Field(
        default="refuse",
        description="a request-time categorical value outside the contract's `allowed`: `refuse` answers 422 "
        "naming the field; `score` scores it as a category the model never saw and flags the logged row "
        "(`off_contract`), so feedback never trains on it",
    )

    @model_validator(mode="after")
    def _target_below_the_bound(self) -> Serving:
        auto = self.autoscaling
        if auto is not None and auto.target_ongoing_requests >= self.max_concurrent_requests:
            raise ValueError(
                f"serving.autoscaling.target_ongoing_requests ({auto.target_ongoing_requests:g}) must be below "
                f"max_concurrent_requests ({self.max_concurrent_requests}): a replica sheds at that bound, so the "
                "load would never reach the target and Serve would never add a replica"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "batch_wait_timeout_s" in data:
            raise ValueError(
                "batch_wait_timeout_s was removed: a batch takes what queued while the previous one ran, "
                "so a lone request never waits; delete the key"
            )
        return data


class Drift(Model):
    """The drift check: its schedule, window and thresholds."""

    schedule: str | None = Field(
        default="@hourly",
        description="when the drift DAG runs: a cron expression or an Airflow preset; null: only when triggered",
    )
    window_hours: float = Field(
        default=24.0, gt=0.0, description="hours of recent served requests compared with the training data"
    )
    min_requests: int = Field(
        default=500, ge=1, description="requests the window needs; fewer is insufficient data, never an alarm"
    )
    max_drift_share: float = Field(
        default=0.3,
        ge=0.0,
        le=1.0,
        description="the share of the model's features (not counting `ignore`) that may drift before the check "
        "asks for retraining (0.3: 30 %)",
    )
    psi_threshold: float = Field(
        default=0.2,
        gt=0.0,
        description="a population stability index above this is drift, for a feature and for the prediction",
    )
    max_performance_drop: float = Field(
        default=0.05,
        ge=0.0,
        description="how far the primary metric on labelled requests may fall from the champion's evaluation, in "
        "the metric's units, before retraining is asked",
    )
    cooldown_hours: float = Field(
        default=24.0, ge=0.0, description="hours after a retraining request during which no other is made"
    )
    ignore: list[str] = Field(
        default_factory=list,
        description="features whose drift is expected (they grow with time, or are volatile): reported, "
        "never counted towards max_drift_share",
    )


class Embeddings(Model):
    """Vectors the model writes beside its score: the `embedding` output of its ONNX model, one
    pgvector space per model version, filled by the `embed` step and switched with the champion."""

    layer: Literal["last_hidden"] = Field(
        default="last_hidden", description="the tabular model's last hidden layer (its width: the trial's hidden_units)"
    )
    dimension: int | None = Field(
        default=None, ge=1, le=2000, description="checked against the model's embedding width when given"
    )
    distance: Literal["cosine", "l2", "inner_product"] = Field(
        default="cosine", description="the pgvector distance searches and the index use"
    )
    index: Literal["hnsw", "ivfflat"] = Field(default="hnsw", description="the pgvector index kind built on the space")
    min_recall_at_10: float = Field(
        default=0.9, gt=0.0, le=1.0, description="the index's recall@10 against exact search, on a sample: a gate"
    )
    recall_sample: int = Field(
        default=200, ge=10, le=10_000, description="entities sampled to measure the index's recall@10"
    )
    batch_rows: int = Field(default=10_000, ge=100, description="entities embedded and copied per batch")
    retain_hours: float = Field(
        default=168.0, ge=0.0, description="how long a retired champion's space is kept before it is dropped"
    )
    drift_roc_auc: float | None = Field(
        default=None,
        gt=0.5,
        lt=1.0,
        description="the drift check reports embedding drift (how well a classifier tells served vectors from "
        "training ones, ROC AUC); above this it counts as drift and asks for retraining (default: reported only, "
        "since features expected to move, drift.ignore, move the vectors too)",
    )
