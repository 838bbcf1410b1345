"""A hostile or careless client cannot hold the server: body limits and timeouts, the queue limit, the
API key, and SIGTERM under load, each against a real `unmask serve` process."""
from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from unmask.bench.serving import free_port

KEY = "sekret"
LONG = {"max_tokens": 300, "block_size": 8, "strategy": "low_confidence"}  # Shakespeare: no EOS, ~300 passes


def launch(*extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "unmask.cli", "serve", "--model", "shakespeare-mdm", "--port",
                             str(port), *extra], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode())
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the server did not come up")


@pytest.fixture(scope="module")
def guarded():
    proc, base = launch("--max-running", "1", "--max-queue", "0", "--api-key", KEY, "--max-body", "0.01",
                        "--header-timeout", "1", "--body-timeout", "1")
    yield base
    proc.terminate()
    assert proc.wait(timeout=30) == 0


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def raw(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_all(s: socket.socket) -> bytes:
    parts = []
    while chunk := s.recv(65536):
        parts.append(chunk)
    return b"".join(parts)


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def test_the_api_key_is_required_except_for_health_and_metrics(guarded):
    body = {"model": "shakespeare-mdm", "prompt": "To be", "max_tokens": 8}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.post(guarded + "/v1/completions", json=body, headers=headers)
        assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
    assert httpx.get(guarded + "/v1/models").status_code == 401
    assert httpx.post(guarded + "/v1/completions", json=body, headers=auth()).status_code == 200
    assert httpx.get(guarded + "/health").status_code == 200 and httpx.get(guarded + "/metrics").status_code == 200


def test_a_body_over_the_limit_is_a_413_before_it_is_read(guarded):
    with raw(guarded) as s:
        t0 = time.perf_counter()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 100000000\r\n\r\n")
        reply = read_all(s)  # the server closes the connection after its reply
        assert status_of(reply) == 413 and time.perf_counter() - t0 < 1.0
        assert b"--max-body" in reply
    chunked = json.dumps({"model": "shakespeare-mdm", "prompt": "x" * 20000}).encode()
    r = httpx.post(guarded + "/v1/completions", content=iter([chunked[:8000], chunked[8000:]]), headers=auth())
    assert r.status_code == 413  # no length declared: counted as it arrives


def test_slow_headers_are_cut_off_and_a_slow_body_is_a_408(guarded):
    with raw(guarded) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # and then nothing: slowloris
        t0 = time.perf_counter()
        assert s.recv(100) == b""  # closed by the server
        assert time.perf_counter() - t0 < 3.0
    with raw(guarded) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                  + b"\r\nContent-Length: 100\r\n\r\n{\"model\"")
        assert status_of(s.recv(65536)) == 408


def test_past_running_plus_queue_a_request_is_a_503(guarded):
    body = {"model": "shakespeare-mdm", "prompt": "To be", "stream": True, **LONG}
    with httpx.stream("POST", guarded + "/v1/completions", json=body, headers=auth(), timeout=60) as r:
        lines = r.iter_lines()  # held: a dropped iterator closes the stream, which cancels the request
        next(lines)  # the first request is running
        second = httpx.post(guarded + "/v1/completions", json={**body, "stream": False}, headers=auth())
        assert second.status_code == 503 and "--max-queue" in second.json()["error"]["message"]


def test_sigterm_with_48_in_flight_gives_each_client_its_answer_or_a_clean_error():
    proc, base = launch("--max-running", "16", "--shutdown-grace", "2")

    def ask(i: int) -> str:
        body = {"model": "shakespeare-mdm", "prompt": f"To be {i}", "stream": i % 2 == 0,
                **(LONG if i % 3 else {"max_tokens": 8})}
        r = httpx.post(base + "/v1/completions", json=body, timeout=60)
        if not body["stream"]:
            if r.status_code == 200:
                return "answer" if r.json()["choices"][0]["finish_reason"] == "length" else "bad"
            return "error" if r.status_code == 503 and r.json()["error"]["message"] else "bad"
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        if events[-1] != "[DONE]":
            return "cut"
        last = json.loads(events[-2])
        if "error" in last:
            return "error"
        return "answer" if last["choices"][0]["finish_reason"] == "length" else "bad"

    with concurrent.futures.ThreadPoolExecutor(48) as pool:
        futures = [pool.submit(ask, i) for i in range(48)]
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        outcomes = [f.result() for f in futures]
    assert proc.wait(timeout=30) == 0, proc.stderr.read().decode()[-2000:]
    assert set(outcomes) <= {"answer", "error"}, outcomes
    assert "error" in outcomes and "answer" in outcomes  # short ones finished in the grace, long ones did not
