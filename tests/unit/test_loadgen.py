"""tests/loadgen.py: the wrk script and the summary it prints (pure); one real run on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests import loadgen


def test_lua_strings_hold_any_text() -> None:
    assert loadgen.lua_string("a") == "[[a]]"
    assert loadgen.lua_string("x]]y") == "[=[x]]y]=]"


def test_parse_reads_the_summary_line() -> None:
    line = loadgen.MARK + json.dumps(
        {"requests": 500, "duration_us": 2_000_000, "non_2xx": 3, "socket_errors": 1, "p50_us": 1500,
         "p99_us": 9000, "p999_us": 12000, "max_us": 20000}
    )  # fmt: skip
    r = loadgen.parse("Running 2s test\n" + line + "\n", 16)
    assert (r.rps, r.p50_ms, r.p99_ms, r.p999_ms, r.non_2xx, r.connections) == (250.0, 1.5, 9.0, 12.0, 3, 16)
    with pytest.raises(RuntimeError, match="no summary"):
        loadgen.parse("nothing", 1)


class _Echo(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, bytes]] = []  # noqa: RUF012

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Echo.seen.append((self.path, self.headers.get("x-api-key", ""), body))
        self.send_response(200 if body != b'{"n": 2}' else 503)
        if body == b'{"n": 2}' and self.path == "/retry":
            self.send_header("Retry-After", "1")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_wrk_posts_the_bodies_with_the_headers_and_counts_non_2xx() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/predict"
        r = loadgen.run(url, ['{"n": 1}', '{"n": 2}'], {"x-api-key": "k"}, connections=2, seconds=1)
    finally:
        server.shutdown()
    assert r.requests > 10 and r.non_2xx > 0 and r.non_2xx < r.requests
    paths, keys, bodies = zip(*_Echo.seen, strict=True)
    assert set(paths) == {"/v1/predict"} and set(keys) == {"k"} and set(bodies) == {b'{"n": 1}', b'{"n": 2}'}


def test_wrk_counts_responses_by_status_and_the_503s_that_say_when_to_retry() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        r = loadgen.run(f"{base}/retry", ['{"n": 1}', '{"n": 2}'], {}, connections=2, seconds=1, statuses=True)
        plain = loadgen.run(f"{base}/plain", ['{"n": 2}'], {}, connections=1, seconds=1, statuses=True)
    finally:
        server.shutdown()
    assert r.statuses is not None and set(r.statuses) == {200, 503}
    assert sum(r.statuses.values()) >= r.requests - 2  # wrk stops mid-response on at most a connection each
    assert r.statuses[503] == r.non_2xx == r.retry_after
    assert plain.statuses is not None and plain.retry_after == 0 and set(plain.statuses) == {503}


def test_a_paced_load_sends_at_most_a_request_per_delay_and_connection() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/predict"
        proc, work = loadgen.start(url, ['{"n": 1}'], {}, connections=2, seconds=2, delay_ms=100)
        paced = loadgen.finish(proc, work, 2, 2)
    finally:
        server.shutdown()
    assert 10 <= paced.requests <= 2 * 2 * 10 + 2  # 2 connections, 2 s, one request per 100 ms each
