"""Malformed and hostile bodies against each bundled model kind: every one is a 4xx with an OpenAI-style
error, never a 5xx, and sent among 12 ordinary concurrent requests they change none of their answers."""
from __future__ import annotations

import concurrent.futures
import itertools

import httpx
import pytest

from unmask.decode.spec import OPTIONS
from test_server import start_server

BAD_VALUES = [-1, 0, 1e-45, 1e300, -1e300, 2**64, 2**70, "abc", "", True, False, [], [1], {}, {"a": 1}, "1; DROP",
              "\u0000", "é" * 50]
FIELDS = [o.field_name for o in OPTIONS if o.field_name] + ["model", "prompt", "stream", "n", "messages"]
STRUCTURE = [b"", b"{", b"null", b"[]", b"123", b'"text"', b'{"model": "M"}', b'{"prompt": "sort: 1"}',
             b"\xff\xfe", b'{"model": "M", "prompt": "sort: 1", "max_tokens": 1e309}',
             b'{"model": "M", "prompt": "sort: 1", "temperature": NaN}',
             b'{"model": "M", "prompt": "sort: 1", "temperature": Infinity}',
             b'{"model": "M", "prompt": ["a", "b"]}', b'{"model": "M", "prompt": "\\u00ff\\u4e2d"}',
             b'{"model": "M", "prompt": "' + b"9" * 5000 + b'"}']
CHAT = [{"model": "M", "messages": []}, {"model": "M", "messages": [{"role": "user"}]},
        {"model": "M", "messages": [{"role": "robot", "content": "hi"}]},
        {"model": "M", "messages": [{"role": "user", "content": 5}]}, {"model": "M", "messages": "hi"}]


def hostile_bodies(model: str) -> list[tuple[str, dict | bytes]]:
    """(path, body): each field given each bad value alone, the broken structures, the broken chats."""
    base = {"model": model, "prompt": "sort: 4 2", "max_tokens": 4}
    out: list[tuple[str, dict | bytes]] = [("/v1/completions", {**base, f: v})
                                           for f, v in itertools.product(FIELDS, BAD_VALUES)]
    out += [("/v1/completions", raw.replace(b'"M"', f'"{model}"'.encode())) for raw in STRUCTURE]
    out += [("/v1/chat/completions", {**c, "model": model}) for c in CHAT]
    return out


def post(base: str, path: str, body: dict | bytes) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(base + path, content=body, headers={"content-type": "application/json"}, timeout=60)
    return httpx.post(base + path, json=body, timeout=60)


@pytest.mark.parametrize("model", ["sort-mdm", "sort-ar", "sort-d2f"])
def test_no_hostile_body_gets_a_5xx_nor_changes_an_honest_answer(model):
    honest = [{"model": model, "prompt": f"sort: {(7 * i) % 50} {(3 * i + 1) % 50} {i}"} for i in range(12)]
    for base, _ in start_server(model):
        alone = [post(base, "/v1/completions", b).json()["choices"][0]["text"] for b in honest]
        hostile = hostile_bodies(model)
        jobs = [("/v1/completions", b) for b in honest] + hostile
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            replies = list(pool.map(lambda job: post(base, *job), jobs))
        together = [r.json()["choices"][0]["text"] for r in replies[:12]]
        server_errors = [(job, r.status_code, r.text[:200]) for job, r in zip(hostile, replies[12:])
                         if r.status_code >= 500]
        assert not server_errors, server_errors
        for job, r in zip(hostile, replies[12:]):
            if r.status_code >= 400:
                assert r.json()["error"]["message"], job
        assert together == alone
