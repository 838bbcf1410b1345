"""The serving load without HTTP: the same prompts and options straight into an `Engine`, in this process.

It separates what batching buys the engine from what the server around it costs: if throughput with C
requests in flight is not much above one at a time here, the model's forward passes are already full
at batch 1 and no server can do better on this machine.
"""
from __future__ import annotations

import time
from typing import Any

from unmask.engine.engine import Engine
from unmask.engine.request import SamplingParams
from unmask.evaluation import prompt_for, task_of
from unmask.models.checkpoints import load_model
from unmask.server.protocol import DecodingFields
from unmask.threads import choose_threads


def params_for(extra: dict[str, Any], max_new_tokens: int) -> SamplingParams:
    """The SamplingParams the server builds from the same extra body fields (validated as it does)."""
    return DecodingFields(**extra).sampling_params(max_new_tokens)


def engine_only(model_name: str, extra: dict[str, Any], concurrency: tuple[int, ...], n_requests: int
                ) -> list[dict[str, Any]]:
    """Completion tokens/s of `n_requests` held-out prompts with at most C running, for each C."""
    model = load_model(model_name)
    threads = choose_threads(model)  # the server's rule, so the two are comparable
    task = task_of(model)
    encoded = [prompt_for(model, ex.prompt) for ex in task.test_examples[:n_requests]]
    params = params_for(extra, encoded[0][1])
    prompts = [ids for ids, _ in encoded]
    Engine(model).generate(prompts[:4], params)  # warm-up, untimed
    rows = []
    for c in concurrency:
        engine = Engine(model, max_running=c)
        t0 = time.perf_counter()
        done = engine.generate(prompts, params)
        wall = time.perf_counter() - t0
        tokens = sum(len(r.output_ids) for r in done)
        rows.append({"model": model_name, "concurrency": c, "requests": len(done), "seconds": wall,
                     "tokens": tokens, "throughput_tokens_per_s": tokens / wall, "threads": threads})
    return rows
