"""A real `unmask serve` process on 127.0.0.1, driven by the official openai client and raw HTTP."""
from __future__ import annotations

import concurrent.futures
import http.client
import os
import subprocess
import sys
import time

import httpx
import openai
import pytest
import torch

import unmask
from unmask.bench.serving import free_port
from unmask.evaluation import prompt_for


def start_server(model: str, *extra: str):
    """`unmask serve` in a child process; yields (base url, served name) and stops it with SIGTERM."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "unmask.cli", "serve", "--model", model, "--port", str(port),
                             *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode())
    yield base, os.path.basename(model)
    proc.terminate()
    code = proc.wait(timeout=30)
    log = proc.stderr.read().decode()
    assert code == 0 and "Application shutdown complete" in log, log[-2000:]


def complete_together(base: str, served: str, cases: list[tuple], **fields) -> list[str]:
    """POST every (prompt, options) case to /v1/completions at once (all in flight together: batched in
    the engine), with `fields` in each body; each answer's text, in order (each must be a 200)."""
    def ask(case):
        prompt, options = case
        r = httpx.post(base + "/v1/completions", json={"model": served, "prompt": prompt, **fields, **options},
                       timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]
    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
        return list(pool.map(ask, cases))


@pytest.fixture(scope="module")
def server(trained_mdm):
    folder = str(trained_mdm[0])
    for base, name in start_server(folder, "--max-running", "16"):
        yield base, name, folder


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


def expected(folder: str, text: str, **kw) -> str:
    model = unmask.load_model(folder)
    ids, default_new = prompt_for(model, text)
    out = unmask.generate(model, torch.tensor([ids]), max_new_tokens=kw.pop("max_new_tokens", default_new), **kw)
    return model.tokenizer.decode(out.sequences[0])


def test_completion_equals_generate(server, client):
    base, name, folder = server
    res = client.completions.create(model=name, prompt="sort: 9 4 7", max_tokens=12,
                                    extra_body={"strategy": "threshold", "threshold": 0.5, "block_size": 4})
    assert res.choices[0].text == expected(folder, "sort: 9 4 7", max_new_tokens=12, strategy="threshold",
                                           threshold=0.5, block_size=4)
    assert res.choices[0].finish_reason in ("stop", "length") and res.usage.completion_tokens >= 0


def test_stream_deltas_add_up_to_the_plain_answer(server, client):
    _, name, _ = server
    kw = dict(model=name, prompt="sort: 3 8 1 5", max_tokens=16, seed=7, temperature=0.7)
    plain = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == plain
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_models_health_metrics(server):
    base, name, _ = server
    assert httpx.get(base + "/v1/models").json()["data"][0]["id"] == name
    metrics = httpx.get(base + "/metrics").text
    for key in ("unmask_requests_total", "unmask_generated_tokens_total", "unmask_forward_passes",
                "unmask_tokens_per_forward", "unmask_queue_length", "unmask_request_latency_seconds_bucket",
                "unmask_time_to_first_token_seconds_bucket"):
        assert key in metrics


BAD = [
    (b"{not json", 400),
    (b'{"model": "nope", "prompt": "sort: 1"}', 404),
    (b'{"model": "MODEL", "prompt": 5}', 400),
    (b'{"model": "MODEL", "prompt": "sort: 1", "max_tokens": -1}', 400),
    (b'{"model": "MODEL", "prompt": "sort: 1", "max_tokens": 10000000}', 400),
    (b'{"model": "MODEL", "prompt": "sort: 1", "max_tokens": 250}', 400),  # beyond the model's context
    (b'{"model": "MODEL", "prompt": "sort: ' + b"1 " * 200 + b'"}', 400),  # prompt longer than the context
    (b'{"model": "MODEL", "prompt": ""}', 400),
    (b'{"model": "MODEL", "prompt": "sort: 1", "strategy": "nope"}', 400),
    (b'{"model": "MODEL", "prompt": "sort: 1", "threshold": -2}', 400),
    (b'{"model": "MODEL", "prompt": "sort: 1", "n": 17}', 400),
    (b'{"model": "MODEL", "prompt": "sort: 1", "best_of": 2}', 400),
    (b'{"model": "MODEL", "prompt": "sort: 1", "logprobs": -1}', 400),
    (b'{"model": "MODEL", "prompt": "sort: 1", "logprobs": true}', 400),  # completions take a count
    (b'{"model": "MODEL", "prompt": "sort: 1", "stop": [""]}', 400),
    (b'{"model": "MODEL", "prompt": [99999]}', 400),
    (b'{"model": "MODEL", "prompt": []}', 400),
    (b'{"model": "MODEL"}', 400),
]


@pytest.mark.parametrize("body,status", BAD)
def test_bad_requests_get_a_4xx_with_an_openai_error(server, body, status):
    base, name, _ = server
    r = httpx.post(base + "/v1/completions", content=body.replace(b"MODEL", name.encode()),
                   headers={"content-type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert err["message"] and err["type"]
    assert httpx.get(base + "/health").json()["status"] == "ok"


def test_32_concurrent_clients_each_get_their_own_answer(server, client):
    _, name, folder = server
    prompts = [f"sort: {i % 10} {(7 * i) % 10} {(3 * i + 1) % 10}" for i in range(32)]

    def ask(p: str) -> str:
        return client.completions.create(model=name, prompt=p, max_tokens=12,
                                         extra_body={"strategy": "low_confidence", "block_size": 12}).choices[0].text

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, prompts))
    model = unmask.load_model(folder)
    for p, a in zip(prompts, answers):
        ids, _ = prompt_for(model, p)
        ref = unmask.generate(model, torch.tensor([ids]), max_new_tokens=12, block_size=12)
        assert a == model.tokenizer.decode(ref.sequences[0]), p


def test_a_client_that_leaves_mid_stream_frees_its_slot():
    """Shakespeare text has no EOS to end early: 50 blocks of 8 steps, so the client leaves mid-way."""
    for base, name in start_server("shakespeare-mdm"):
        body = {"model": name, "prompt": "To be", "max_tokens": 400, "stream": True, "block_size": 8,
                "strategy": "low_confidence"}
        with httpx.stream("POST", base + "/v1/completions", json=body, timeout=30) as r:
            assert r.status_code == 200
            first = next(line for line in r.iter_lines() if line.startswith("data:"))
            assert '"finish_reason": null' in first
        deadline = time.time() + 20
        while time.time() < deadline and httpx.get(base + "/health").json()["running"]:
            time.sleep(0.05)
        assert httpx.get(base + "/health").json()["running"] == 0
        assert 'unmask_requests_total{outcome="cancelled"} 1.0' in httpx.get(base + "/metrics").text


def test_an_idle_connection_stays_open_for_the_next_request(server):
    """A client that pauses between requests reuses its connection; uvicorn's 5 s default once raced such a reuse
    ("Server disconnected without sending a response")."""
    conn = http.client.HTTPConnection(server[0].removeprefix("http://"), timeout=10)
    sockets = []
    for pause in (0.0, 6.0):
        time.sleep(pause)
        conn.request("GET", "/health")
        reply = conn.getresponse()  # raises RemoteDisconnected if the server closed the idle connection
        assert reply.status == 200 and b"running" in reply.read()
        sockets.append(conn.sock)
    conn.close()
    assert sockets[0] is sockets[1]  # the same connection served both


def test_chat_uses_the_models_template(server, client):
    _, name, folder = server
    res = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "sort: 6 2 4"}],
                                         max_tokens=12, extra_body={"block_size": 12})
    assert res.choices[0].message.role == "assistant"
    assert res.choices[0].message.content == expected(folder, "sort: 6 2 4", max_new_tokens=12, block_size=12)
    chunks = list(client.chat.completions.create(model=name, messages=[{"role": "user", "content": "sort: 6 2 4"}],
                                                 max_tokens=12, stream=True, extra_body={"block_size": 12}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == res.choices[0].message.content


def test_a_block_diffusion_model_serves_concurrent_d2f_requests_as_generate_decodes_them():
    """The bundled D2F student, at its default (the D2F pipeline, exact caches), 16 concurrent streams."""
    prompts = [f"sort: {(13 * i) % 100} {(7 * i + 5) % 100} {(31 * i + 2) % 100} {i}" for i in range(16)]
    for base, name in start_server("sort-d2f"):
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)

        def ask(p: str) -> str:
            return "".join(c.choices[0].text for c in client.completions.create(model=name, prompt=p, stream=True))

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, prompts))
        with pytest.raises(openai.BadRequestError, match="approximate cache for bidirectional"):
            client.completions.create(model=name, prompt="sort: 3 1", extra_body={"strategy": "threshold",
                                                                                  "cache": "dual"})
    for p, a in zip(prompts, answers):
        assert a == expected("sort-d2f", p), p
