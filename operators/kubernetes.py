"""The `kubernetes` runtime: the provider's `KubernetesPodOperator`, keeping mlcycle's exit codes.

`mlcycle step` exits 100 when a step has nothing to do (skipped: the provider's
`skip_on_exit_code`), and 2 or 3 on a bad spec or argument or on rejected data: retrying cannot
help, so the task fails without retry, as on the local runtime. A worker that dies while its pod
runs does not start a second pod: the next try reattaches to the running one (`durable`: the pod's
identity in the task state store, or the provider's labels by DAG, task and run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

from pipelines.core.errors import NO_RETRY_EXIT_CODES, SKIP_EXIT_CODE

if TYPE_CHECKING:
    from airflow.sdk import Context
    from kubernetes.client import models as k8s


def exit_code(remote_pod: Any, container: str) -> int | None:
    """The exit code of a pod's terminated container, or None (running, or no such container). Pure."""
    statuses = (remote_pod.status.container_statuses if remote_pod and remote_pod.status else None) or []
    status = next((s for s in statuses if s.name == container), None)
    terminated = status.state.terminated if status and status.state else None
    return int(terminated.exit_code) if terminated is not None else None


class StepPodOperator(KubernetesPodOperator):
    """A step pod: skipped on 100, failed without retry on 2 and 3, reattached after a worker crash."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("skip_on_exit_code", SKIP_EXIT_CODE)
        kwargs.setdefault("durable", True)
        super().__init__(**kwargs)

    def cleanup(
        self,
        pod: k8s.V1Pod,
        remote_pod: k8s.V1Pod,
        xcom_result: dict[str, Any] | None = None,
        context: Context | None = None,
    ) -> None:
        from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

        code = exit_code(remote_pod, self.base_container_name)
        try:
            super().cleanup(pod, remote_pod, xcom_result, context)
        except AirflowSkipException:
            raise
        except AirflowException as err:
            if code in NO_RETRY_EXIT_CODES:
                raise AirflowFailException(f"{err}\nThe step exited {code}: retrying cannot help") from err
            raise
