"""`wrk`, the C load generator, driven from Python: a Lua script for the POST bodies and headers,
a fixed connection count and duration, and its latency distribution read back as JSON.

Used by bench/serving.py and by the serving load tests (tests/integration/test_serving.py); the client is C, so it does not measure
itself on the same cores the way a Python client would. `tools/wrk.sh` installs it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MARK = "MLCYCLE_WRK "


@dataclass(frozen=True)
class Result:
    connections: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: int
    statuses: dict[int, int] | None = None  # with `statuses=True`: responses by status
    retry_after: int | None = None  # and how many 503s carried a Retry-After header

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def lua_string(text: str) -> str:
    """A Lua long-bracket string literal that holds `text` as is. Pure."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


STATUSES = """
statuses = {}
retry_after = 0
function response(status, headers, body)
  local k = tostring(status)
  statuses[k] = (statuses[k] or 0) + 1
  if status == 503 and (headers["Retry-After"] or headers["retry-after"]) then retry_after = retry_after + 1 end
end
"""
"""Counting by status (only when asked: wrk then hands every response to Lua, which costs)."""


def script(bodies: Sequence[str], headers: dict[str, str], path: str, statuses: bool = False, delay_ms: int = 0) -> str:
    """The Lua script: POST `path` with the bodies in turn (each connection starts elsewhere in the
    list), the headers, and a JSON summary printed at the end; with `statuses`, the responses by
    status too; with `delay_ms`, each connection waits that long before each request (a paced
    load: at most connections x 1000 / delay_ms requests a second). Pure."""
    lines = ["local bodies = {"]
    lines += [f"  {lua_string(b)}," for b in bodies]
    lines.append("}")
    lines.append("local headers = {")
    lines += [f"  [ {lua_string(k)} ] = {lua_string(v)}," for k, v in headers.items()]
    lines.append("}")
    lines.append(
        f"""
local counter = 0
local path = {lua_string(path)}
local threads = {{}}
function setup(thread)
  thread:set("offset", counter * 7919)
  counter = counter + 1
  table.insert(threads, thread)
end
local n = 0
function request()
  n = n + 1
  local body = bodies[((offset or 0) + n) % #bodies + 1]
  return wrk.format("POST", path, headers, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  local by_status, retry = {{}}, 0
  for _, t in ipairs(threads) do
    for k, n in pairs(t:get("statuses") or {{}}) do by_status[k] = (by_status[k] or 0) + n end
    retry = retry + (t:get("retry_after") or 0)
  end
  local parts = {{}}
  for k, n in pairs(by_status) do table.insert(parts, string.format('"%s": %d', k, n)) end
  io.write(string.format(
    '{MARK}{{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d, "statuses": {{%s}}, "retry_after": %d}}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
    table.concat(parts, ", "), retry))
end
"""
    )
    if statuses:
        lines.append(STATUSES)
    if delay_ms:
        lines.append(f"function delay() return {int(delay_ms)} end")
    return "\n".join(lines)


def parse(output: str, connections: int) -> Result:
    """wrk's summary line as a `Result`. Pure."""
    line = next((ln for ln in output.splitlines() if ln.startswith(MARK)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{output[-2000:]}")
    d = json.loads(line.removeprefix(MARK))
    seconds = d["duration_us"] / 1e6
    return Result(
        connections=connections,
        seconds=round(seconds, 2),
        requests=d["requests"],
        rps=round(d["requests"] / seconds, 1) if seconds else 0.0,
        p50_ms=d["p50_us"] / 1000,
        p99_ms=d["p99_us"] / 1000,
        p999_ms=d["p999_us"] / 1000,
        max_ms=d["max_us"] / 1000,
        non_2xx=d["non_2xx"],
        socket_errors=d["socket_errors"],
        statuses={int(k): n for k, n in d["statuses"].items()} if d.get("statuses") else None,
        retry_after=d["retry_after"] if d.get("statuses") else None,
    )


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise FileNotFoundError("wrk is not installed: run `bash tools/wrk.sh` (Debian's wrk)")
    return found


def start(
    url: str,
    bodies: Sequence[str],
    headers: dict[str, str],
    connections: int,
    seconds: float,
    timeout_s: float = 10.0,
    statuses: bool = False,
    delay_ms: int = 0,
) -> tuple[subprocess.Popen[str], Path]:
    """Start wrk against `url` (scheme://host:port/path) in the background; `finish` reads it."""
    scheme, rest = url.split("://", 1)
    host, _, path = rest.partition("/")
    work = Path(tempfile.mkdtemp(prefix="mlcycle-wrk-"))
    (work / "post.lua").write_text(
        script(bodies, {"Content-Type": "application/json", **headers}, "/" + path, statuses, delay_ms)
    )
    argv = [
        wrk_binary(),
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_s:g}s",
        "-s",
        str(work / "post.lua"),
        f"{scheme}://{host}",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, work


def finish(proc: subprocess.Popen[str], work: Path, connections: int, seconds: float) -> Result:
    out, _ = proc.communicate(timeout=seconds + 60)
    shutil.rmtree(work, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{out[-2000:]}")
    return parse(out, connections)


def stop(proc: subprocess.Popen[str], work: Path, connections: int) -> Result:
    """End a wrk that `start` started before its duration (SIGINT: wrk still prints its summary,
    over the time it ran) and read it."""
    proc.send_signal(signal.SIGINT)
    return finish(proc, work, connections, 0)


def run(
    url: str,
    bodies: Sequence[str],
    headers: dict[str, str],
    connections: int,
    seconds: float,
    statuses: bool = False,
) -> Result:
    """One fixed-duration level of load; blocks until wrk ends."""
    proc, work = start(url, bodies, headers, connections, seconds, statuses=statuses)
    return finish(proc, work, connections, seconds)
