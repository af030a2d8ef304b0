"""Serve's replicas on the node's own address, not on every interface.

Ray Serve 2.60 starts a gRPC server in every replica for calls between deployments and binds it
to `[::]:0`: every interface of the host, in plaintext (only `RAY_USE_TLS` encrypts it). It is
made by `create_grpc_server_with_interceptors`, which attaches Ray's token interceptor when the
process runs with `RAY_AUTH_MODE=token` (every Ray node of mlcycle does: `serve start`, Compose, the
chart): a call without the cluster's token is refused `UNAUTHENTICATED`; without token mode it
takes any caller. Either way it need not be reachable beyond the node. Serve binds it after the
deployment's constructor has run, so our constructors call `bind_replica_grpc()` first:
- a version deployment (called by the ingress through its handle, at the node's address) binds
  the node's address only (Ray makes that the host's routable address even when told
  `--node-ip-address=127.0.0.1`);
- the ingress, which no deployment calls (HTTP reaches it from HAProxy on Serve's HTTP host),
  binds Serve's HTTP host when that is loopback: on one machine nothing of Serve's listens
  beyond 127.0.0.1 but Ray's own core-worker port.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

WILDCARDS = ("[::]", "0.0.0.0", "")  # noqa: S104 (what is recognised and narrowed, never bound)


def narrowed(address: str, node_ip: str) -> str:
    """`address` (host:port) with a wildcard host replaced by the node's address. Pure."""
    host, _, port = address.rpartition(":")
    if host not in WILDCARDS:
        return address
    return f"[{node_ip}]:{port}" if ":" in node_ip else f"{node_ip}:{port}"


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


def bind_replica_grpc(loopback_host: str | None = None) -> None:
    """Make this replica's inter-deployment gRPC server bind `loopback_host` when it is a loopback
    address, else the node's address (idempotent per process)."""
    import ray  # heavy: ray
    from ray.serve._private import replica

    original: Callable[[Any, str], int] = replica.add_port_to_grpc_server  # type: ignore[attr-defined]
    if getattr(original, "mlcycle_narrowed", False):
        return
    host = loopback_host if loopback_host and is_loopback(loopback_host) else ray.util.get_node_ip_address()

    def add_port(server: Any, address: str) -> int:
        return original(server, narrowed(address, host))

    add_port.mlcycle_narrowed = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port  # type: ignore[attr-defined]
