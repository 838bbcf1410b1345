"""The serving load without HTTP: the same prompts and options straight into the engine, in this process.

It separates what batching buys the engine from what the server around it costs. For each C: the
engine with at most C requests in flight (continuous batching: a finished request's slot is refilled
at once, as `unmask eval --batch-size C` runs), and a static batch (`unmask.generate` on C prompts at a
time, each batch waiting for its slowest row). If throughput with C in flight is not much above one at
a time, the model's forward passes are already full at batch 1 and no server can do better here.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from unmask.engine.engine import Engine
from unmask.engine.request import SamplingParams
from unmask.evaluation import left_pad, prompt_for, task_of
from unmask.generation import generate
from unmask.models.checkpoints import load_model
from unmask.server.protocol import DecodingFields
from unmask.threads import choose_threads


def params_for(extra: dict[str, Any], max_new_tokens: int) -> SamplingParams:
    """The SamplingParams the server builds from the same extra body fields (validated as it does)."""
    return DecodingFields(**extra).sampling_params(max_new_tokens)


def engine_only(model_name: str, extra: dict[str, Any], concurrency: tuple[int, ...], n_requests: int,
                device: str = "cpu") -> list[dict[str, Any]]:
    """Completion tokens/s of `n_requests` held-out prompts, continuous (C in flight) and static (batches of C)."""
    model = load_model(model_name, device=device)
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
        static_wall, static_tokens = static_batches(model, prompts, params.options, c)
        rows.append({"model": model_name, "concurrency": c, "requests": len(done), "seconds": wall,
                     "tokens": tokens, "throughput_tokens_per_s": tokens / wall,
                     "static_tokens_per_s": static_tokens / static_wall, "threads": threads})
    return rows


def static_batches(model: torch.nn.Module, prompts: list[list[int]], options: dict[str, Any], size: int
                   ) -> tuple[float, int]:
    """(seconds, completion tokens) of decoding `prompts` `size` at a time, each batch to its slowest row."""
    tokens, t0 = 0, time.perf_counter()
    for i in range(0, len(prompts), size):
        ids, mask = left_pad(prompts[i:i + size], model.pad_token_id)
        tokens += sum(generate(model, ids, prompt_mask=mask, **options).lengths)
    return time.perf_counter() - t0, tokens
