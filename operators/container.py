"""Runtime `docker`: the step's rendered pod as one container, through the Docker Engine API.

The pod stays the single source of truth: its container's image, command (the entrypoint), args,
env, CPU and memory limits, GPU limit (a device request), user and dropped capabilities become
the container's; its labels and run id become labels. Secrets, which reach a pod by `envFrom`,
reach the container from the worker's environment, by name (`MLCYCLE_DOCKER_ENV_FROM`). Output
is streamed line by line to the task log, the exit code is the task's result, the XCom file is
read back from the stopped container, and the container is removed whatever happened.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import secrets
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from operators.local import StepFailed
from pipelines.core.pod import XCOM_PATH, container_of

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)$")
_MEMORY_UNITS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def nano_cpus(quantity: str) -> int:
    """A Kubernetes CPU quantity ("2", "0.5", "500m") in Docker's nano-CPUs. Pure."""
    m = _QUANTITY.match(str(quantity).strip())
    if not m or m.group(2) not in ("", "m"):
        raise ValueError(f"not a CPU quantity: {quantity!r}")
    value = float(m.group(1)) / (1000 if m.group(2) == "m" else 1)
    return round(value * 1e9)


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity ("512Mi", "4Gi", "1G", "1000") in bytes. Pure."""
    m = _QUANTITY.match(str(quantity).strip())
    if not m or m.group(2) not in _MEMORY_UNITS:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    return int(float(m.group(1)) * _MEMORY_UNITS[m.group(2)])


def container_config(
    manifest: dict[str, Any],
    worker_env: Mapping[str, str],
    env_from: list[str],
    network: str | None = None,
) -> dict[str, Any]:
    """The keyword arguments of `docker.containers.create` for the pod's step container. Pure.

    `env_from` names the variables taken from `worker_env` (the secrets a pod gets by
    `envFrom`); the pod's own env wins over them. GPU limits become one device request."""
    c = container_of(manifest)
    meta = manifest["metadata"]
    env = {name: worker_env[name] for name in env_from if name in worker_env}
    env.update({item["name"]: item["value"] for item in c.get("env", [])})
    limits = c.get("resources", {}).get("limits", {})
    security = c.get("securityContext", {})
    labels = {**meta.get("labels", {}), **meta.get("annotations", {})}
    config: dict[str, Any] = {
        "image": c["image"],
        "entrypoint": c.get("command"),
        "command": c.get("args"),
        "environment": env,
        "labels": labels,
        "name": f"{meta['name']}-{secrets.token_hex(3)}",
        "detach": True,
    }
    if "cpu" in limits:
        config["nano_cpus"] = nano_cpus(limits["cpu"])
    if "memory" in limits:
        config["mem_limit"] = memory_bytes(limits["memory"])
    gpus = sum(int(v) for k, v in limits.items() if k.endswith("/gpu"))
    if gpus:
        config["device_requests"] = [{"Driver": "nvidia", "Count": gpus, "Capabilities": [["gpu"]]}]
    if "runAsUser" in security:
        config["user"] = str(security["runAsUser"])
    if "ALL" in security.get("capabilities", {}).get("drop", []):
        config["cap_drop"] = ["ALL"]
    if security.get("allowPrivilegeEscalation") is False:
        config["security_opt"] = ["no-new-privileges"]
    if network:
        config["network"] = network
    return config


def fit_to_engine(config: dict[str, Any], ncpu: int, has_gpu: bool, gpu_policy: str = "auto") -> list[str]:
    """Fit `config` (in place) to the engine that runs it; returns what was changed, for the log.

    A CPU limit above the engine's CPUs is refused by Docker: it is lowered to what there is. A GPU
    request on an engine without the NVIDIA runtime runs on the CPU (the steps pick CUDA or CPU
    at run time) unless `gpu_policy` is `require`; `off` never asks for one. Pure."""
    notes: list[str] = []
    if config.get("nano_cpus", 0) > ncpu * 10**9:
        notes.append(f"CPU limit {config['nano_cpus'] / 1e9:g} lowered to the engine's {ncpu} CPUs")
        config["nano_cpus"] = ncpu * 10**9
    if "device_requests" in config and (gpu_policy == "off" or not has_gpu):
        if gpu_policy == "require":
            raise RuntimeError("the step asks for a GPU and this Docker engine has no NVIDIA runtime")
        count = sum(int(r.get("Count", 0)) for r in config.pop("device_requests"))
        why = "MLCYCLE_DOCKER_GPU=off" if gpu_policy == "off" else "this Docker engine has no NVIDIA runtime"
        notes.append(f"asks for {count} GPU(s); {why}: running on the CPU")
    return notes


def split_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """The lines of a byte stream cut anywhere (Docker's log chunks split lines and characters);
    a last line without its newline too. Pure."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            yield raw.decode("utf-8", "replace").rstrip("\r")
    if buf:
        yield buf.decode("utf-8", "replace")


def read_xcom(archive: bytes) -> Any:
    """The step's result from `get_archive(XCOM_PATH)`'s tar stream (None when empty). Pure."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = next((m for m in tar.getmembers() if m.isfile()), None)
        if member is None:
            return None
        fh = tar.extractfile(member)
        data = fh.read() if fh else b""
    return json.loads(data) if data.strip() else None


SAME_STEP = ("mlcycle.io/pipeline", "mlcycle.io/step", "mlcycle.io/worker", "mlcycle.io/run-id")


def same_step_filters(labels: dict[str, str]) -> list[str]:
    """Docker label filters that find the containers of one step of one run (and trial worker).
    Pure."""
    return [f"{k}={labels[k]}" for k in SAME_STEP if k in labels]


class DockerContainer:
    """One run of a pod's step container on a Docker engine; `terminate()` from another thread."""

    def __init__(
        self, manifest: dict[str, Any], config: dict[str, Any], pull_policy: str = "IfNotPresent", gpu: str = "auto"
    ) -> None:
        self.manifest, self.config, self.pull_policy, self.gpu = manifest, config, pull_policy, gpu
        self.container: Any = None
        self.code: int | None = None

    def run(self, log: Callable[[str], None], client: Any = None) -> Any:
        """Run to completion; returns the step's XCom result (or None); raises StepFailed."""
        import docker

        client = client or docker.from_env()
        self._ensure_image(client)
        info = client.info()
        has_gpu = "nvidia" in (info.get("Runtimes") or {})
        for note in fit_to_engine(self.config, int(info.get("NCPU") or 1), has_gpu, self.gpu):
            log(f"[mlcycle] {note}")
        c = container_of(self.manifest)
        argv = [*(c.get("command") or []), *(c.get("args") or [])]
        self._remove_leftovers(client, log)
        self.container = client.containers.create(**self.config)
        tail: list[str] = []
        try:
            self.container.start()
            for line in split_lines(self._output()):
                log(line)
                tail = [*tail[-49:], line]
            code = -1 if self.code is None else self.code  # set by _output once the container exits
            if code != 0:
                raise StepFailed(argv, code, tail)
            return self._xcom()
        finally:
            self._remove()

    def _remove_leftovers(self, client: Any, log: Callable[[str], None]) -> None:
        """Remove the containers an earlier try of this step left: a try whose task process died
        (the scheduler killed, its node lost) leaves its container running, which would go on
        writing beside this one. The step resumes from what that one recorded."""
        import docker

        labels = self.config.get("labels") or {}
        if "mlcycle.io/run-id" not in labels:  # not a run's step: nothing identifies an earlier try
            return
        for old in client.containers.list(all=True, filters={"label": same_step_filters(labels)}):
            log(f"[mlcycle] removing container {old.name} ({old.status}), left by an earlier try of this step")
            with contextlib.suppress(docker.errors.NotFound):
                old.remove(force=True)

    def _output(self) -> Iterator[bytes]:
        """The container's output as it comes, then (once it has exited, with its exit code kept)
        whatever the follow stream ended without: the engine may write an unterminated last line
        only at exit, after the stream closed."""
        seen = 0
        for chunk in self.container.logs(stream=True, follow=True):
            seen += len(chunk)
            yield chunk
        self.code = int(self.container.wait()["StatusCode"])
        yield self.container.logs(stdout=True, stderr=True)[seen:]

    def _ensure_image(self, client: Any) -> None:
        import docker

        image = self.config["image"]
        try:
            client.images.get(image)
            if self.pull_policy != "Always":
                return
        except docker.errors.ImageNotFound:
            if self.pull_policy == "Never":
                raise RuntimeError(
                    f"image {image} is not on this Docker engine and the pull policy is Never: "
                    "build it with `make images`"
                ) from None
        try:
            client.images.pull(image)
        except docker.errors.APIError as err:
            raise RuntimeError(f"image {image} could not be pulled ({err}); build it with `make images`") from None

    def _xcom(self) -> Any:
        import docker

        try:
            stream, _ = self.container.get_archive(XCOM_PATH)
        except docker.errors.NotFound:
            return None
        return read_xcom(b"".join(stream))

    def _remove(self) -> None:
        import docker

        if self.container is None:
            return
        with contextlib.suppress(docker.errors.NotFound):
            self.container.remove(force=True)

    def terminate(self, grace_s: int = 10) -> None:
        """Stop the container (SIGTERM, SIGKILL after `grace_s`); `run` then removes it."""
        import docker

        if self.container is None:
            return
        with contextlib.suppress(docker.errors.NotFound):
            self.container.stop(timeout=grace_s)
