"""Least privilege in the chart, the step pods and the Compose stack, checked over what they render.

The chart is rendered by the real helm (tests/unit/test_helm_chart.py's helpers); the step pods by
the pod builder under the chart's settings, and the one the provider would send through the
operator; the Compose file is parsed as Compose reads it (anchors and merge keys).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import ApiClient

from pipelines.core.pod import pod_manifest
from pipelines.core.settings import Settings
from pipelines.core.spec import load_spec, parse_spec
from pipelines.core.steps import STEP_NAMES
from pipelines.local.stack import SECRETS
from tests.conftest import CHURN_SPEC
from tests.specs import churn_spec_dict
from tests.unit.test_helm_chart import EXAMPLE, GPU_VALUES, kinds, pod_specs, render

PROJECT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------ Pod Security "restricted"
# https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline + restricted)
ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SECCOMP = {"RuntimeDefault", "Localhost"}


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """Why a pod spec fails Pod Security "restricted" or has a writable root filesystem. Pure."""
    out: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC", "hostUsers"):
        if spec.get(field) is (field != "hostUsers"):
            out.append(f"pod: {field}")
    for volume in spec.get("volumes") or []:
        kind = next(k for k in volume if k != "name")
        if kind not in ALLOWED_VOLUMES:
            out.append(f"volume {volume['name']}: {kind}")
    if pod_sc.get("runAsUser") == 0:
        out.append("pod: runAsUser 0")
    if (pod_sc.get("seccompProfile") or {}).get("type", "RuntimeDefault") not in SECCOMP:
        out.append("pod: seccompProfile")
    containers = [*(spec.get("initContainers") or []), *spec.get("containers", [])]
    containers += spec.get("ephemeralContainers") or []
    for c in containers:
        out += [f"{c['name']}: {why}" for why in _container_violations(c, pod_sc)]
    return out


def _container_violations(c: dict[str, Any], pod_sc: dict[str, Any]) -> list[str]:
    sc = c.get("securityContext") or {}
    out = []
    if sc.get("privileged"):
        out.append("privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        out.append("allowPrivilegeEscalation not false")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        out.append("capabilities not dropping ALL")
    if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
        out.append(f"capabilities added: {caps['add']}")
    if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
        out.append("runAsNonRoot not true")
    if sc.get("runAsUser") == 0:
        out.append("runAsUser 0")
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp not in SECCOMP:
        out.append(f"seccompProfile {seccomp}")
    if sc.get("procMount", "Default") != "Default":
        out.append("procMount")
    if any(p.get("hostPort") for p in c.get("ports") or []):
        out.append("hostPort")
    if sc.get("readOnlyRootFilesystem") is not True:
        out.append("root filesystem writable")
    return out


GOOD_CONTAINER = {
    "name": "c",
    "securityContext": {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    },
}


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"hostNetwork": True}, "pod: hostNetwork"),
        ({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}, "volume h: hostPath"),
        ({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}, "c: seccompProfile Unconfined"),
        ({"securityContext": {}}, "c: seccompProfile None"),
        ({"containers": [{**GOOD_CONTAINER, "securityContext": {}}]}, "c: allowPrivilegeEscalation not false"),
        (
            {
                "containers": [
                    {**GOOD_CONTAINER, "securityContext": {**GOOD_CONTAINER["securityContext"], "privileged": True}}
                ]
            },
            "c: privileged",
        ),
        (
            {
                "containers": [
                    {
                        **GOOD_CONTAINER,
                        "securityContext": {
                            **GOOD_CONTAINER["securityContext"],
                            "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]},
                        },
                    }
                ]
            },
            "c: capabilities added: ['SYS_ADMIN']",
        ),
        (
            {
                "containers": [
                    {
                        **GOOD_CONTAINER,
                        "securityContext": {**GOOD_CONTAINER["securityContext"], "readOnlyRootFilesystem": False},
                    }
                ]
            },
            "c: root filesystem writable",
        ),
        ({"initContainers": [{"name": "init"}]}, "init: capabilities not dropping ALL"),
    ],
)
def test_the_check_refuses_what_restricted_refuses(change: dict[str, Any], why: str) -> None:
    good = {"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}, "containers": [GOOD_CONTAINER]}
    assert restricted_violations(good) == []
    assert why in restricted_violations({**good, **change})


def _autoscaler(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """KubeRay's autoscaler: a container of the head pod, from the RayService's options."""
    cluster = next(d for d in docs if d["kind"] == "RayService")["spec"]["rayClusterConfig"]
    return {"name": "autoscaler", "securityContext": cluster["autoscalerOptions"]["securityContext"]}


@pytest.mark.parametrize("variant", ["default", "gpu", "example"])
def test_every_pod_of_the_chart_passes_pod_security_restricted(variant: str) -> None:
    if variant == "example":
        docs = render(values=EXAMPLE, release="mlcycle", namespace="ml-prod")
    else:
        docs = render(*(GPU_VALUES if variant == "gpu" else []))
    specs = pod_specs(docs)
    assert {name for name, _ in specs} >= {"rel-mlcycle-mlflow", "head", "cpu", "gpu"} - (
        {"rel-mlcycle-mlflow"} if variant == "example" else set()
    )
    for name, spec in specs:
        assert restricted_violations(spec) == [], name
        mounts = {m["mountPath"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
        assert {"/tmp", "/home/mlcycle"} <= mounts, name
    head = next(spec for name, spec in specs if name == "head")
    assert restricted_violations({**head, "containers": [_autoscaler(docs)]}) == []


def test_the_namespace_is_labelled_restricted() -> None:
    (ns,) = [d for d in render() if d["kind"] == "Namespace"]
    assert ns["metadata"]["name"] == "ml"
    for mode in ("enforce", "audit", "warn"):
        assert ns["metadata"]["labels"][f"pod-security.kubernetes.io/{mode}"] == "restricted"
    assert ns["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"  # uninstall keeps it


# ------------------------------------------------------------------------------ step pods
@pytest.fixture
def chart_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings Airflow's workers get from the chart's ConfigMap (default values)."""
    for key, value in kinds(render())["ConfigMap/rel-mlcycle-settings"]["data"].items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLCYCLE_DATABASE_URL", "postgresql://u@db/mlcycle")
    return Settings()


def _step_pods(settings: Settings) -> dict[str, dict[str, Any]]:
    spec = load_spec(CHURN_SPEC)
    return {
        step: pod_manifest(spec, step, "r1", settings, worker=0 if step == "trials" else None) for step in STEP_NAMES
    }


def test_every_step_pod_and_the_one_the_provider_sends_pass_restricted(chart_settings: Settings) -> None:
    for step, pod in _step_pods(chart_settings).items():
        assert restricted_violations(pod["spec"]) == [], step
        assert pod["spec"]["automountServiceAccountToken"] is False, step
    # what the operator hands the provider, after the provider's own additions
    from operators import PipelineStepOperator
    from tests.unit.test_step_operator import _context

    sent: dict[str, Any] = {}

    def fake_execute(self: KubernetesPodOperator, context: Any) -> None:
        sent["pod"] = ApiClient().sanitize_for_serialization(self.build_pod_request_obj(context, dry_run=True))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(KubernetesPodOperator, "execute", fake_execute)
        mp.setattr("operators.step.step_outputs", lambda *_: {})
        op = PipelineStepOperator(task_id="train", pipeline="churn", step="train", runtime="kubernetes")
        op.run_key = "r1"
        op.execute(_context("r1"))
    assert restricted_violations(sent["pod"]["spec"]) == []
    assert [c["name"] for c in sent["pod"]["spec"]["containers"]] == ["base"]  # no XCom sidecar: no exec


def test_step_pods_hold_no_serving_key_and_only_the_canary_the_ray_token(chart_settings: Settings) -> None:
    docs = render()
    ray_refs = {
        e["secretRef"]["name"]
        for name, spec in pod_specs(docs)
        if name in ("head", "cpu", "gpu")
        for c in spec["containers"]
        for e in c.get("envFrom", [])
        if "secretRef" in e
    }
    assert ray_refs == {"mlcycle-env", "mlcycle-ray-token", "mlcycle-serving-keys"}
    airflow = yaml.safe_load(kinds(docs)["ConfigMap/rel-mlcycle-airflow-values"]["data"]["values.yaml"])
    airflow_refs = {e["secretRef"]["name"] for e in yaml.safe_load(airflow["extraEnvFrom"]) if "secretRef" in e}
    assert airflow_refs == {"mlcycle-env"}  # Airflow: the database and S3, no token, no key
    for step, pod in _step_pods(chart_settings).items():
        (c,) = pod["spec"]["containers"]
        refs = {e["secretRef"]["name"] for e in c.get("envFrom", [])}
        wanted = {"mlcycle-env", "mlcycle-ray-token"} if step == "canary" else {"mlcycle-env"}
        assert refs == wanted, step
        names = {e["name"] for e in c["env"]}
        assert not names & {"MLCYCLE_SERVING_API_KEYS", "RAY_AUTH_TOKEN"}, step
        # runtime docker: the same split, by variable name
        from pipelines.core.pod import docker_env_from

        taken = set(docker_env_from(chart_settings, step))
        assert "MLCYCLE_SERVING_API_KEYS" not in taken, step
        assert ("RAY_AUTH_TOKEN" in taken) == (step == "canary"), step


def test_a_ray_batch_partition_drives_ray_as_the_canary_does_and_no_other_step_does(chart_settings: Settings) -> None:
    """`batch.runtime: ray`: the partition submits a Ray Data job, so its pod (and its container
    under runtime docker) gets the Ray token and the label the chart's NetworkPolicy lets reach the
    head's Ray Client port; with `runtime: pods` it gets neither."""
    from pipelines.core.pod import docker_env_from

    policies = [d for d in render() if d["kind"] == "NetworkPolicy"]
    for runtime in ("ray", "pods"):
        spec = parse_spec(churn_spec_dict(merge=True, batch={"runtime": runtime}))
        for step in STEP_NAMES:
            pod = pod_manifest(spec, step, "r1", chart_settings, worker=0 if step in ("trials", "batch") else None)
            drives = step == "canary" or (step, runtime) == ("batch", "ray")
            (c,) = pod["spec"]["containers"]
            assert ("mlcycle-ray-token" in {e["secretRef"]["name"] for e in c["envFrom"]}) == drives, (step, runtime)
            assert (pod["metadata"]["labels"].get("mlcycle.io/ray-client") == "true") == drives, (step, runtime)
            assert ({10001, 8000} <= _egress_ports(policies, pod["metadata"]["labels"])) == drives, (step, runtime)
            assert ("RAY_AUTH_TOKEN" in docker_env_from(chart_settings, step, spec)) == drives, (step, runtime)


# --------------------------------------------------------------------- accounts and RBAC
def test_no_role_grants_exec_patch_or_secrets() -> None:
    for variant in ([], GPU_VALUES):
        roles = [d for d in render(*variant) if d["kind"] in ("Role", "ClusterRole")]
        assert roles
        for role in roles:
            for rule in role["rules"]:
                assert "pods/exec" not in rule["resources"], role["metadata"]["name"]
                assert "pods/attach" not in rule["resources"], role["metadata"]["name"]
                assert "secrets" not in rule["resources"], role["metadata"]["name"]
                if "pods" in rule["resources"]:
                    assert not {"patch", "update", "*"} & set(rule["verbs"]), role["metadata"]["name"]


def test_one_service_account_per_component_with_a_token_only_where_the_api_is_called() -> None:
    docs = render()
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    used = {name: spec["serviceAccountName"] for name, spec in pod_specs(docs)}
    assert used == {
        "rel-mlcycle-mlflow": "rel-mlcycle-mlflow",
        "head": "rel-mlcycle-ray-head",
        "cpu": "rel-mlcycle-ray-worker",
        "gpu": "rel-mlcycle-ray-worker",
    }
    tokens = {name: spec.get("automountServiceAccountToken") for name, spec in pod_specs(docs)}
    assert tokens == {"rel-mlcycle-mlflow": False, "head": True, "cpu": False, "gpu": False}  # head: autoscaler
    assert accounts["mlcycle-steps"]["automountServiceAccountToken"] is False
    assert {s["name"] for d in docs if d["kind"] == "RoleBinding" for s in d["subjects"]} == {
        "airflow-scheduler",
        "airflow-worker",
        "airflow-api-server",
        "rel-mlcycle-ray-head",
    }
    no_autoscaler = render("serving.autoscaling.enabled=false")
    assert all(spec.get("automountServiceAccountToken") is False for _, spec in pod_specs(no_autoscaler))
    airflow = yaml.safe_load(kinds(docs)["ConfigMap/rel-mlcycle-airflow-values"]["data"]["values.yaml"])
    sa = {k: airflow[k]["serviceAccount"] for k in ("scheduler", "workers", "apiServer", "dagProcessor", "triggerer")}
    assert len({v["name"] for v in sa.values()}) == 5
    assert {k: v["automountServiceAccountToken"] for k, v in sa.items()} == {
        "scheduler": True,
        "workers": True,
        "apiServer": True,
        "dagProcessor": False,
        "triggerer": False,
    }
    statsd = airflow["statsd"]
    assert statsd["serviceAccount"]["automountServiceAccountToken"] is False
    assert (
        restricted_violations(
            {
                "securityContext": statsd["securityContexts"]["pod"],
                "containers": [{"name": "statsd", "securityContext": statsd["securityContexts"]["container"]}],
            }
        )
        == []
    )
    assert airflow["rbac"]["create"] is False  # the official chart's pod-launcher role grants pods/exec
    assert airflow["networkPolicies"]["enabled"] is True
    assert (
        restricted_violations(
            {
                "securityContext": airflow["securityContexts"]["pod"],
                "volumes": airflow["volumes"],
                "containers": [{"name": "airflow", "securityContext": airflow["securityContexts"]["containers"]}],
            }
        )
        == []
    )


# ----------------------------------------------------------------------- network policies
def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions In/NotIn/Exists) selects `labels`. Pure."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        value, op = labels.get(e["key"]), e["operator"]
        ok = {
            "In": value in e.get("values", []),
            "NotIn": value not in e.get("values", []),
            "Exists": value is not None,
            "DoesNotExist": value is None,
        }[op]
        if not ok:
            return False
    return True


def _allowed_from(policies: list[dict[str, Any]], labels: dict[str, str], port: int) -> list[dict[str, Any]]:
    """The peers that may open `port` on a pod with `labels` (a NetworkPolicy's ingress rules). Pure."""
    peers: list[dict[str, Any]] = []
    for p in policies:
        if _selects(p["spec"]["podSelector"], labels) and "Ingress" in p["spec"]["policyTypes"]:
            for rule in p["spec"].get("ingress") or []:
                if not rule.get("ports") or any(x["port"] == port for x in rule["ports"]):
                    peers += rule.get("from") or [{"anyone": True}]
    return peers


def _template_labels(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    out = {}
    for d in docs:
        if d["kind"] == "Deployment":
            out[d["metadata"]["name"]] = d["spec"]["template"]["metadata"]["labels"]
        if d["kind"] == "RayService":
            cluster = d["spec"]["rayClusterConfig"]
            out["head"] = cluster["headGroupSpec"]["template"]["metadata"]["labels"]
            for g in cluster["workerGroupSpecs"]:
                out[g["groupName"]] = g["template"]["metadata"]["labels"]
    return out


def test_every_component_has_a_network_policy(chart_settings: Settings) -> None:
    docs = render()
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods = {
        **_template_labels(docs),
        **{f"step {s}": p["metadata"]["labels"] for s, p in _step_pods(chart_settings).items()},
    }
    assert {"rel-mlcycle-mlflow", "head", "cpu", "gpu", "step train", "step canary"} <= set(pods)
    for name, labels in pods.items():
        assert [p for p in policies if _selects(p["spec"]["podSelector"], labels)], name
    for worker in ("cpu", "gpu"):
        labels = pods[worker]
        for port in (8404, 9101, 8080):  # HAProxy's stats and exporter, Ray's metrics: the Ray pods only
            for peer in _allowed_from(policies, labels, port):
                assert "namespaceSelector" not in peer and "podSelector" in peer, (worker, port, peer)
                assert _selects(peer["podSelector"], pods["head"]), (worker, port, peer)
                for other in ("step train", "step canary", "rel-mlcycle-mlflow"):
                    assert not _selects(peer["podSelector"], pods[other]), (worker, port, other)
        assert {"podSelector": {}} in _allowed_from(policies, labels, 8000)  # Serve: the namespace's clients
    mlflow = _allowed_from(policies, pods["rel-mlcycle-mlflow"], 5000)
    assert {"podSelector": {}} not in mlflow and {"anyone": True} not in mlflow
    assert {
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlcycle", "app.kubernetes.io/component": "step"}}
    } in mlflow
    assert _allowed_from(policies, pods["step train"], 8080) == []  # a step pod answers nothing
    # the Ray Client port: the canary step, not the others
    client = _allowed_from(policies, pods["head"], 10001)
    assert any(_selects(p.get("podSelector", {}), pods["step canary"]) for p in client if "namespaceSelector" not in p)
    assert not any(_selects(p.get("podSelector", {}), pods["step train"]) for p in client if "podSelector" in p)


def _egress_ports(policies: list[dict[str, Any]], labels: dict[str, str]) -> set[int]:
    return {
        port["port"]
        for p in policies
        if _selects(p["spec"]["podSelector"], labels) and "Egress" in p["spec"]["policyTypes"]
        for rule in p["spec"]["egress"]
        for port in rule["ports"]
    }


def test_step_pods_reach_only_dns_the_database_s3_mlflow_and_the_canary_ray(chart_settings: Settings) -> None:
    policies = [d for d in render() if d["kind"] == "NetworkPolicy"]
    pods = _step_pods(chart_settings)
    for step, pod in pods.items():
        ports = _egress_ports(policies, pod["metadata"]["labels"])
        wanted = {53, 5432, 443, 5000} | ({10001, 8000} if step == "canary" else set())
        assert ports == wanted, step
    with_redis = [d for d in render("platform.redisUrl=redis://r.ml.svc:6379/0") if d["kind"] == "NetworkPolicy"]
    assert 6379 in _egress_ports(with_redis, pods["features"]["metadata"]["labels"])


# -------------------------------------------------------------------------------- Compose
def _compose() -> dict[str, Any]:
    return yaml.safe_load((PROJECT / "docker-compose.yaml").read_text())["services"]


def test_only_the_scheduler_mounts_the_docker_socket() -> None:
    services = _compose()
    mounting = sorted(n for n, s in services.items() if any("docker.sock" in str(v) for v in s.get("volumes", [])))
    assert mounting == ["airflow-scheduler"]
    assert [n for n, s in services.items() if s.get("group_add")] == ["airflow-scheduler"]


def test_compose_secrets_are_split_by_role() -> None:
    services = _compose()
    holders = {
        key: sorted(n for n, s in services.items() if key in (s.get("environment") or {}))
        for key in ("MLCYCLE_SERVING_API_KEYS", "RAY_AUTH_TOKEN")
    }
    assert holders == {"MLCYCLE_SERVING_API_KEYS": ["ray-head"], "RAY_AUTH_TOKEN": ["airflow-scheduler", "ray-head"]}


def test_seaweedfs_signs_volume_and_filer_access_and_listens_only_with_s3() -> None:
    weed = _compose()["seaweedfs"]
    env = weed["environment"]
    jwt = {k: v for k, v in env.items() if k.startswith("WEED_JWT_")}
    assert set(jwt) == {
        "WEED_JWT_SIGNING_KEY",
        "WEED_JWT_SIGNING_READ_KEY",
        "WEED_JWT_FILER_SIGNING_KEY",
        "WEED_JWT_FILER_SIGNING_READ_KEY",
    }
    for value in jwt.values():  # each from the generated .env, never a committed value
        name = value.removeprefix("${").split(":?", 1)[0]
        assert value.startswith("${") and name in SECRETS, value
    assert env["WEED_BIND"] == "127.0.0.1" and env["WEED_IP"] == "127.0.0.1"  # master, volume, filer
    assert env["WEED_S3_BIND"] == "0.0.0.0"  # the S3 API only, in its container
    assert weed["ports"] == ["127.0.0.1:${S3_PORT:-8333}:8333"]
