"""The Helm chart, rendered by the real helm and checked against the Kubernetes API schema."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pipelines.cli import main
from pipelines.core.pod import pod_manifest
from pipelines.core.settings import Settings, scoped_environ
from pipelines.core.spec import load_spec
from serving.deploy import serve_config
from tests.conftest import CHURN_SPEC

PROJECT = Path(__file__).resolve().parents[2]
CHART = PROJECT / "helm" / "mlcycle"
K8S_VERSION = "1.34"
GPU_VALUES = [
    "gpu.nodeSelector.cloud\\.google\\.com/gke-accelerator=nvidia-l4",
    "gpu.tolerations[0].key=nvidia.com/gpu",
    "gpu.tolerations[0].operator=Exists",
    "gpu.tolerations[0].effect=NoSchedule",
    "gpu.tolerations[1].key=dedicated",
    "gpu.tolerations[1].operator=Equal",
    "gpu.tolerations[1].value=ml",
    "gpu.tolerations[1].effect=NoSchedule",
    "serving.gpuWorkers.gpus=2",
    "serving.gpuWorkers.replicas=1",
]


def helm() -> str:
    found = shutil.which("helm") or str(Path(sys.executable).parent / "helm")
    if not Path(found).exists():
        pytest.fail("helm is not installed: `make setup` installs it")
    return found


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120)


def render(*sets: str, values: Path | None = None, release: str = "rel", namespace: str = "ml") -> list[dict[str, Any]]:
    argv = ["template", release, str(CHART), "--namespace", namespace]
    if values is not None:
        argv += ["-f", str(values)]
    for s in sets:
        argv += ["--set", s]
    out = run_helm(*argv)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def kinds(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every pod spec the chart makes: Deployments' and the RayService's head and workers."""
    out = []
    for d in docs:
        if d["kind"] == "Deployment":
            out.append((d["metadata"]["name"], d["spec"]["template"]["spec"]))
        if d["kind"] == "RayService":
            cluster = d["spec"]["rayClusterConfig"]
            out.append(("head", cluster["headGroupSpec"]["template"]["spec"]))
            out += [(g["groupName"], g["template"]["spec"]) for g in cluster["workerGroupSpecs"]]
    return out


def test_lint_strict() -> None:
    out = run_helm("lint", "--strict", str(CHART))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("variant", ["default", "gpu", "external-secret"])
def test_every_object_and_ray_pod_is_valid_kubernetes(variant: str) -> None:
    sets = {"default": [], "gpu": GPU_VALUES, "external-secret": ["existingSecret=team-ml-secrets"]}[variant]
    docs = render(*sets)
    assert {d["kind"] for d in docs} >= {
        "ConfigMap",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
        "RayService",
    }
    for d in docs:
        if d["kind"] != "RayService":  # a custom resource: its pods are checked below
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    for name, spec in pod_specs(docs):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"x-{name}"}, "spec": spec}
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_probes_resources_and_non_root_everywhere() -> None:
    for name, spec in pod_specs(render(*GPU_VALUES)):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in spec["containers"]:
            assert c["readinessProbe"] and c["livenessProbe"], name
            assert c["resources"]["requests"] and c["resources"]["limits"], name
            assert c["securityContext"]["runAsNonRoot"] is True, name
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name


def test_rbac_is_namespaced_and_names_every_verb() -> None:
    docs = render()
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    for role in roles.values():
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], rule
    launcher = roles["rel-mlcycle-pod-launcher"]
    granted = {(r, v) for rule in launcher["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert {("pods", "create"), ("pods", "delete"), ("pods", "watch"), ("pods/log", "get")} <= granted
    assert not any(r in {"secrets", "configmaps", "nodes"} for r, _ in granted)
    bindings = {d["metadata"]["name"]: d for d in docs if d["kind"] == "RoleBinding"}
    assert bindings["rel-mlcycle-pod-launcher"]["subjects"] == [
        {"kind": "ServiceAccount", "name": name, "namespace": "ml"} for name in ("airflow-scheduler", "airflow-worker")
    ]


def test_no_secret_values_in_a_render() -> None:
    docs = render("existingSecret=team-ml-secrets")
    assert not [d for d in docs if d["kind"] == "Secret"]
    text = yaml.safe_dump_all(docs)
    assert not re.search(r"(?i)(password|secret_access_key|api_keys)\s*[:=]\s*\S", text.replace("secretRef", ""))
    refs = {
        e["secretRef"]["name"]
        for _, spec in pod_specs(docs)
        for c in spec["containers"]
        for e in c.get("envFrom", [])
        if "secretRef" in e
    }
    assert refs == {"team-ml-secrets", "mlcycle-ray-token", "mlcycle-serving-keys"}
    settings = kinds(docs)["ConfigMap/rel-mlcycle-settings"]["data"]
    assert settings["MLCYCLE_K8S_ENV_SECRET"] == "team-ml-secrets"  # step pods get it by reference too


def test_gpu_pool_reaches_ray_gpu_workers_and_the_training_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(*GPU_VALUES)
    cluster = next(d for d in docs if d["kind"] == "RayService")["spec"]["rayClusterConfig"]
    gpu = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu")
    spec = gpu["template"]["spec"]
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert [t["key"] for t in spec["tolerations"]] == ["nvidia.com/gpu", "dedicated"]
    (ray,) = spec["containers"]
    assert ray["resources"]["limits"]["nvidia.com/gpu"] == "2" and gpu["rayStartParams"]["num-gpus"] == "2"
    cpu = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "cpu")
    assert "nvidia.com/gpu" not in cpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    # The ConfigMap is what Airflow's workers read: through Settings it reaches the train pod.
    for key, value in kinds(docs)["ConfigMap/rel-mlcycle-settings"]["data"].items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLCYCLE_DATABASE_URL", "postgresql://u@db/mlcycle")
    pod = pod_manifest(load_spec(CHURN_SPEC), "train", "r1", Settings())
    assert pod["spec"]["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-l4"
    assert "dedicated" in [t["key"] for t in pod["spec"]["tolerations"]]
    assert pod["spec"]["containers"][0]["image"] == "mlcycle-step:0.1.0"
    assert pod["metadata"]["namespace"] == "ml"
    # the canary pod reaches the RayService head through its Ray Client port, which the head exposes
    canary = {
        e["name"]: e["value"]
        for e in pod_manifest(load_spec(CHURN_SPEC), "canary", "r1", Settings())["spec"]["containers"][0]["env"]
    }
    assert canary["MLCYCLE_RAY_ADDRESS"] == "ray://rel-mlcycle-head-svc.ml.svc:10001"
    (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert {"name": "client", "containerPort": 10001} in head["ports"]


def test_serve_config_v2_is_the_generated_serve_config() -> None:
    rayservice = next(d for d in render() if d["kind"] == "RayService")
    specs = [load_spec(p) for p in sorted((PROJECT / "include" / "pipelines").glob("*.yaml"))]
    assert yaml.safe_load(rayservice["spec"]["serveConfigV2"]) == json.loads(json.dumps(serve_config(specs)))


def test_the_retention_settings_reach_every_process_and_step_pod() -> None:
    data = kinds(render("retention.requestLogDays=3", "retention.runsDays=0"))["ConfigMap/rel-mlcycle-settings"]["data"]
    values = {k: v for k, v in data.items() if k.startswith("MLCYCLE_RETENTION_")}
    assert values == {
        "MLCYCLE_RETENTION_REQUEST_LOG_DAYS": "3",
        "MLCYCLE_RETENTION_LABELS_DAYS": "90",
        "MLCYCLE_RETENTION_RUNS_DAYS": "0",
        "MLCYCLE_RETENTION_BATCH_PREDICTIONS_DAYS": "30",
        "MLCYCLE_RETENTION_PARTITIONS_AHEAD": "7",
    }
    with scoped_environ(values):
        assert Settings().retention.model_dump() == {
            "request_log_days": 3,
            "labels_days": 90,
            "runs_days": 0,
            "batch_predictions_days": 30,
            "partitions_ahead": 7,
        }


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("images.step.repository=", "/images/step/repository"),
        ("serving.gpuWorkers.gpus=-1", "/serving/gpuWorkers/gpus"),
        ("mlflow.replicas=-2", "/mlflow/replicas"),
        ("colour=blue", "additional properties 'colour' not allowed"),
        ("existingSecret=", "/existingSecret"),
        ("gpu.tolerations[0].tolerationSeconds=30", "/gpu/tolerations/0"),  # NoSchedule takes no seconds
        ("gpu.tolerations[0].tolerationSeconds=soon", "/gpu/tolerations/0/tolerationSeconds"),
        ("serving.cpuWorkers.minReplicas=5", "serving.cpuWorkers: minReplicas (5) is greater than maxReplicas (4)"),
        (
            "serving.gpuWorkers.replicas=3",
            "serving.gpuWorkers: replicas (3) is outside minReplicas..maxReplicas (0..2)",
        ),
        ("images.pullSecrets[0]=Not_A_Name", "/images/pullSecrets/0"),
        ("retention.runsDays=-1", "/retention/runsDays"),
        ("alertmanager.url=am:9093", "/alertmanager/url"),
        ("alertmanager.enabled=true", "alertmanager.enabled needs prometheus.operator.enabled"),
    ],
)
def test_bad_values_are_refused_by_helm(setting: str, message: str) -> None:
    out = run_helm("template", "rel", str(CHART), "--set", setting)
    assert out.returncode != 0
    assert message in out.stderr


def test_every_ray_node_of_the_chart_and_compose_serves_as_the_embedded_head() -> None:
    """The chart's Ray containers and the Compose stack's head run Serve with the environment of
    `mlcycle serve start` (serving.deploy.serve_env), the wrapper at its path in the images."""
    from pipelines.core.settings import Settings
    from serving.deploy import serve_env

    wanted = serve_env(Settings(), "/opt/venv/bin/mlcycle-haproxy")
    for port_key in (
        "RAY_SERVE_HAPROXY_STATS_PORT",
        "RAY_SERVE_HAPROXY_METRICS_PORT",
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
    ):
        wanted.pop(port_key)  # Serve's defaults in a container of its own
    rays = [(name, c) for name, spec in pod_specs(render()) for c in spec["containers"] if c["name"] == "ray"]
    assert len(rays) >= 2  # the head and the workers
    for name, ray in rays:
        env = {e["name"]: e.get("value") for e in ray.get("env", [])}
        assert {k: env.get(k) for k in wanted} == wanted, name
    script = (PROJECT / "include" / "stack" / "ray-head.sh").read_text()
    for key, value in wanted.items():
        assert f"{key}={value}" in script, key


EXAMPLE = PROJECT / "helm" / "examples" / "values-gpu-pool.yaml"


def test_a_gpu_pool_values_example_places_step_pods_and_ray_gpu_workers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/deployment.md's example of a real cluster: pool=a100 tainted gpu=true, a private registry, the
    cluster's UID. The step pod that `mlcycle pod render` prints under the rendered settings, and
    the Ray GPU group, get the same placement, pull secrets and identity."""
    docs = render(values=EXAMPLE, release="mlcycle", namespace="ml-prod")
    for d in docs:
        if d["kind"] != "RayService":
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    objects = kinds(docs)
    settings = objects["ConfigMap/mlcycle-settings"]["data"]
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLCYCLE_DATABASE_URL", "postgresql://u@db/mlcycle")
    assert main(["pod", "render", "--pipeline", "churn", "--step", "train", "--run-id", "r1"]) == 0
    pod = yaml.safe_load(capsys.readouterr().out)
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    pool = [
        {"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
        {"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoExecute", "tolerationSeconds": 600},
    ]
    assert pod["spec"]["nodeSelector"] == {"pool": "a100"}
    assert pod["spec"]["tolerations"][:2] == pool
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert pod["spec"]["securityContext"]["runAsUser"] == 20001 and pod["spec"]["securityContext"]["fsGroup"] == 20001
    assert pod["spec"]["containers"][0]["image"] == "registry.example.com/ml/mlcycle-step:0.1.0"
    assert pod["metadata"]["namespace"] == "ml-prod"
    assert settings["MLCYCLE_MLFLOW_UI_URL"] == "https://mlflow.ml.example.com"
    assert settings["MLCYCLE_REDIS_URL"] == "redis://redis.ml-prod.svc:6379/0"
    assert settings["MLCYCLE_SERVE_HOST"] == "serve.ml.example.com" and settings["RAY_AUTH_MODE"] == "token"

    cluster = objects["RayService/mlcycle"]["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True  # the GPU group grows from zero for GPU replicas
    gpu = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert (gpu["replicas"], gpu["minReplicas"], gpu["maxReplicas"]) == (0, 0, 4)
    spec = gpu["template"]["spec"]
    assert spec["nodeSelector"] == {"pool": "a100"} and spec["tolerations"] == pool
    assert spec["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert spec["securityContext"]["runAsUser"] == 20001
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for name, pod_spec in pod_specs(docs):
        assert pod_spec["imagePullSecrets"] == [{"name": "registry-creds"}], name


def test_the_ray_head_is_closed_to_the_cluster_but_its_clients() -> None:
    policy = kinds(render())["NetworkPolicy/rel-mlcycle-ray-head"]["spec"]
    assert policy["podSelector"]["matchExpressions"][0]["values"] == ["ray-head"]
    nodes, control, serve, _agent = policy["ingress"]
    assert {p["port"] for p in control["ports"]} == {6379, 8265, 10001}
    sources = [f["podSelector"]["matchLabels"] for f in control["from"]]
    canary = {
        "app.kubernetes.io/name": "mlcycle",
        "app.kubernetes.io/component": "step",
        "mlcycle.io/ray-client": "true",
    }
    assert canary in sources
    assert {"component": "worker", "release": "airflow"} in sources
    assert [p["port"] for p in serve["ports"]] == [8000]
    (ray,) = nodes["from"]
    assert ray["podSelector"]["matchLabels"] == {"app.kubernetes.io/instance": "rel"}
    assert ray["podSelector"]["matchExpressions"][0]["values"] == ["ray-head", "ray-worker-cpu", "ray-worker-gpu"]
    assert "NetworkPolicy/rel-mlcycle-ray-head" not in kinds(render("networkPolicy.enabled=false"))


def test_airflow_values_follow_the_release_the_secret_and_the_namespace() -> None:
    docs = render("existingSecret=team-secret", "images.pullSecrets[0]=regcred", release="ml", namespace="ml-prod")
    values = yaml.safe_load(kinds(docs)["ConfigMap/ml-mlcycle-airflow-values"]["data"]["values.yaml"])
    refs = yaml.safe_load(values["extraEnvFrom"])
    settings = kinds(docs)
    assert refs == [{"configMapRef": {"name": "ml-mlcycle-settings"}}, {"secretRef": {"name": "team-secret"}}]
    assert "ConfigMap/ml-mlcycle-settings" in settings  # the name Airflow's pods reference exists
    assert values["config"]["kubernetes_executor"]["namespace"] == "ml-prod"
    assert values["workers"]["serviceAccount"]["name"] == "airflow-worker"
    binding = kinds(docs)["RoleBinding/ml-mlcycle-pod-launcher"]
    assert values["workers"]["serviceAccount"]["name"] in [s["name"] for s in binding["subjects"]]
    assert values["registry"] == {"secretName": "regcred"}
    assert values["images"]["airflow"]["repository"] == "mlcycle-airflow"


def test_the_rayservice_carries_the_ingress_autoscaling_of_an_autoscaling_pipeline() -> None:
    """The bundled wine pipeline autoscales: the RayService's serve config gives its ingress
    Serve's `autoscaling_config` (KubeRay's autoscaler then adds the workers the replicas need)."""
    from serving.config import autoscaling_config

    cluster = next(d for d in render() if d["kind"] == "RayService")["spec"]
    apps = {a["name"]: a for a in yaml.safe_load(cluster["serveConfigV2"])["applications"]}
    wine = load_spec(PROJECT / "include" / "pipelines" / "wine.yaml").serving.autoscaling
    assert wine is not None
    (ingress,) = apps["wine"]["deployments"]
    assert ingress == {"name": "ingress", "autoscaling_config": autoscaling_config(wine)}
    assert ingress["autoscaling_config"]["max_replicas"] > ingress["autoscaling_config"]["min_replicas"]
    assert cluster["rayClusterConfig"]["enableInTreeAutoscaling"] is True


def test_the_prometheus_rule_holds_the_request_logs_and_every_pipelines_rules_from_the_specs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipelines.core.alerts import render_rules, slos

    assert "PrometheusRule" not in {d["kind"] for d in render()}  # prometheus-operator's CRD: asked for
    rule = kinds(render("prometheus.operator.enabled=true", "prometheus.operator.ruleLabels.release=kps"))
    spec = rule["PrometheusRule/rel-mlcycle"]
    assert spec["metadata"]["labels"]["release"] == "kps"
    specs = [load_spec(p) for p in sorted((PROJECT / "include" / "pipelines").glob("*.yaml"))]
    shipped = yaml.safe_load((PROJECT / "include" / "stack" / "alerts.yml").read_text())["groups"]
    assert spec["spec"] == yaml.safe_load(render_rules(slos(specs), before=shipped))
    names = [g["name"] for g in spec["spec"]["groups"]]
    assert names == [g["name"] for g in shipped] + [f"mlcycle-{s.name}" for s in specs]
    with scoped_environ({"MLCYCLE_PIPELINES_DIR": str(PROJECT / "include" / "pipelines")}):
        assert main(["alerts", "rules", "--check"]) == 0, capsys.readouterr().err  # the chart's copy is fresh


def _alertmanager_port_open(docs: dict[str, dict[str, Any]]) -> bool:
    egress = docs["NetworkPolicy/rel-mlcycle-steps"]["spec"]["egress"]
    return any({"port": 9093, "protocol": "TCP"} in rule.get("ports", []) for rule in egress)


def test_an_alertmanager_url_reaches_the_settings_and_the_step_pods_may_reach_it() -> None:
    docs = kinds(render("alertmanager.url=http://alertmanager.monitoring.svc:9093"))
    data = docs["ConfigMap/rel-mlcycle-settings"]["data"]
    assert data["MLCYCLE_ALERTMANAGER_URL"] == "http://alertmanager.monitoring.svc:9093"
    assert _alertmanager_port_open(docs)
    assert "Alertmanager" not in {d["kind"] for d in docs.values()}
    plain = kinds(render())
    assert "MLCYCLE_ALERTMANAGER_URL" not in plain["ConfigMap/rel-mlcycle-settings"]["data"]
    assert not _alertmanager_port_open(plain)


def test_the_charts_alertmanager_routes_every_alert_to_the_webhook_secret_and_receives_the_events() -> None:
    docs = kinds(
        render("prometheus.operator.enabled=true", "alertmanager.enabled=true", "alertmanager.webhookSecret=hook")
    )
    manager, config = docs["Alertmanager/rel-mlcycle"], docs["AlertmanagerConfig/rel-mlcycle"]
    # the operator picks the config by its labels, and routes the steps' events (no namespace label)
    assert manager["spec"]["alertmanagerConfigSelector"]["matchLabels"].items() <= config["metadata"]["labels"].items()
    assert manager["spec"]["alertmanagerConfigMatcherStrategy"] == {"type": "None"}
    assert manager["spec"]["securityContext"]["runAsNonRoot"] is True
    route, (receiver,) = config["spec"]["route"], config["spec"]["receivers"]
    assert route["receiver"] == receiver["name"] and route["groupBy"] == ["alertname", "pipeline"]
    assert receiver["webhookConfigs"][0]["urlSecret"] == {"name": "hook", "key": "MLCYCLE_ALERTS_WEBHOOK_URL"}
    data = docs["ConfigMap/rel-mlcycle-settings"]["data"]
    assert data["MLCYCLE_ALERTMANAGER_URL"] == "http://alertmanager-operated.ml.svc:9093"
    assert _alertmanager_port_open(docs)
