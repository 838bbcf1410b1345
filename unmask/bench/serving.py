"""`unmask bench --serve`: concurrent streaming clients against a real `unmask serve` process.

Every decoder (DECODERS: each of sort-mdm's rules and caches, early commit, the verifier, D2F, block
diffusion with its exact cache, ISD and the AR twin) under the same closed-loop load: C clients, each
sending held-out sort prompts one after another for a fixed time, streaming the answer. Reported per
decoder and concurrency: throughput (completion tokens/s over the window), time to first token and
latency p50/p99, and failed requests. Every decoder is served by the same engine, so the ratios are
engine-for-engine. Then the same prompts go straight into the engine, no HTTP (bench/engine_only.py),
with C in flight and in static batches of C, to show what batching buys the engine itself here.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx

from unmask.bench.engine_only import engine_only
from unmask.evaluation import task_of
from unmask.models.checkpoints import load_model

CONCURRENCY = (1, 8, 32)
# Every decoder, each on the bundled model it is made for: (model, the request's extra body fields).
# sort-mdm's default is Fast-dLLM's threshold rule at 0.9 (entropy) with the dual cache; the verifier vets
# threshold 0.7 commits with sort-ar-small (the server loads it once at start).
DECODERS: dict[str, tuple[str, dict[str, Any]]] = {
    "mdm default": ("sort-mdm", {}),
    "mdm threshold+prefix": ("sort-mdm", {"strategy": "threshold", "cache": "prefix"}),
    "mdm threshold+delayed": ("sort-mdm", {"strategy": "threshold", "cache": "delayed"}),
    "mdm factor+dual": ("sort-mdm", {"strategy": "factor", "cache": "dual"}),
    "mdm vanilla+early commit": ("sort-mdm", {"strategy": "low_confidence", "early_commit": True}),
    "mdm verifier": ("sort-mdm", {"strategy": "verifier"}),
    "d2f": ("sort-d2f", {}),
    "bd threshold+exact": ("sort-bd", {"strategy": "threshold", "cache": "exact"}),
    "isd": ("sort-isd", {"strategy": "isd"}),
    "ar": ("sort-ar", {}),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(model: str, max_running: int, device: str = "cpu") -> Iterator[str]:
    """An `unmask serve` child process on a free local port; its base URL while the block runs."""
    port = free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    proc = subprocess.Popen([sys.executable, "-m", "unmask.cli", "serve", "--model", model, "--port", str(port),
                             "--max-running", str(max_running), "--device", device], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError(f"unmask serve --model {model} exited: {proc.stderr.read().decode()[-500:]}")
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def one_request(client: httpx.AsyncClient, base: str, body: dict[str, Any]) -> dict[str, Any]:
    """One streamed completion. The bytes are only looked at when they arrive and parsed once at the end:
    the clients share this machine with the server, and parsing every chunk as it comes would take CPU
    the server then does not have."""
    t0 = time.perf_counter()
    first = None
    parts: list[bytes] = []
    async with client.stream("POST", base + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return {"ok": False, "error": f"HTTP {r.status_code}: {r.text[:200]}"}
        async for part in r.aiter_raw():
            if first is None and b'"text": ""' not in part:  # the first chunk that carries text
                first = time.perf_counter() - t0
            parts.append(part)
    latency = time.perf_counter() - t0
    tokens = 0
    for line in b"".join(parts).decode().splitlines():
        if not line.startswith("data: {"):
            continue
        if '"error"' in line or '"usage"' in line:
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"ok": False, "error": chunk["error"]["message"]}
            tokens = chunk["usage"]["completion_tokens"]
    return {"ok": True, "latency": latency, "ttft": first if first is not None else latency, "tokens": tokens}


async def load(base: str, name: str, prompts: list[str], extra: dict[str, Any], concurrency: int,
               seconds: float) -> dict[str, Any]:
    """Closed loop: `concurrency` clients each send their next prompt as soon as the last one is answered."""
    results: list[dict[str, Any]] = []
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def client_loop(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            prompt = prompts[next(counter) % len(prompts)]
            body = {"model": name, "prompt": prompt, "stream": True, **extra}
            try:
                results.append(await one_request(client, base, body))
            except httpx.HTTPError as err:
                results.append({"ok": False, "error": f"{type(err).__name__}: {err}"})

    limits = httpx.Limits(max_connections=concurrency + 4)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["ok"]]

    def pct(xs: list[float], q: float) -> float | None:
        if not xs:
            return None
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]

    lat, ttft = [r["latency"] for r in ok], [r["ttft"] for r in ok]
    return {"concurrency": concurrency, "seconds": wall, "requests": len(results), "failed": len(results) - len(ok),
            "errors": sorted({r["error"] for r in results if not r["ok"]})[:5],
            "tokens": sum(r["tokens"] for r in ok), "throughput_tokens_per_s": sum(r["tokens"] for r in ok) / wall,
            "latency_p50_s": pct(lat, 0.5), "latency_p99_s": pct(lat, 0.99),
            "ttft_p50_s": pct(ttft, 0.5), "ttft_p99_s": pct(ttft, 0.99),
            "latency_mean_s": statistics.fmean(lat) if lat else None}


def run_serve_bench(*, quick: bool, out_dir: Path, progress: bool = True, seconds: float | None = None,
                    concurrency: tuple[int, ...] = CONCURRENCY, decoders: tuple[str, ...] | None = None,
                    device: str = "cpu") -> dict[str, Any]:
    """Every decoder (or those named) over HTTP at each concurrency, then in the engine alone."""
    from unmask.bench.serving_report import write_serve_report

    chosen = {role: DECODERS[role] for role in (decoders or tuple(DECODERS))}
    seconds = seconds or (3.0 if quick else 10.0)
    task = task_of(load_model(next(iter(chosen.values()))[0]))
    prompts = [ex.prompt for ex in task.test_examples[:200]]
    rows = []
    by_model: dict[str, list[str]] = {}
    for role, (model, _) in chosen.items():
        by_model.setdefault(model, []).append(role)
    alone = []
    for model, roles in by_model.items():  # one server per model, every decoder of it in turn
        with serving(model, max(concurrency), device) as base:
            threads = httpx.get(base + "/health", timeout=5).json().get("threads")
            for role in roles:
                extra = chosen[role][1]
                asyncio.run(load(base, model, prompts[:4], extra, 1, 1.0))  # warm-up, untimed
                for c in concurrency:
                    if progress:
                        print(f"unmask bench --serve: {role} ({model}) at {c} clients for {seconds:.0f} s",
                              file=sys.stderr)
                    row = asyncio.run(load(base, model, prompts, extra, c, seconds))
                    rows.append({"role": role, "model": model, "options": extra, "server_threads": threads, **row})
                # Right after its HTTP runs, while the server idles: this machine's speed drifts over minutes.
                if progress:
                    print(f"unmask bench --serve: {role} ({model}) in the engine alone (no HTTP)", file=sys.stderr)
                alone += [{"role": role, **r} for r in engine_only(model, extra, concurrency, 64 if quick else 192,
                                                                   device)]
    report = {"seconds_per_level": seconds, "concurrency": list(concurrency), "decoders": chosen, "device": device,
              "prompts": "held-out sort prompts, cycled", "rows": rows, "engine_only": alone}
    write_serve_report(report, out_dir)
    return report
