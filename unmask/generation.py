"""`unmask.generate`: one entry point for every model kind and decoder (the CLI calls it too).

It runs the same rows and runner as `unmask eval` and `unmask serve` (unmask/decode/rows/, unmask/engine/):
a batch is a set of requests stepped together, so each row gets the tokens it gets alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

import torch
from tqdm import tqdm

from unmask.decode.result import GenerationResult
from unmask.decode.rows import Row
from unmask.decode.rows.blocks import BlockRow
from unmask.decode.spec import DEFAULT_DECODING, SEED_LIMIT, Namer, python_name
from unmask.engine.engine import Engine
from unmask.engine.request import Request, SamplingParams
from unmask.models.paged_cache import PAGE, PagedKVCache


def default_decoding(model: torch.nn.Module) -> dict[str, Any]:
    return dict(DEFAULT_DECODING[model.config.kind])


def default_strategy(model: torch.nn.Module) -> str:
    return DEFAULT_DECODING[model.config.kind]["strategy"]


def row_prompts(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor | None) -> list[list[int]]:
    """Each row's prompt tokens, left padding dropped."""
    if prompt_ids.dim() != 2:
        raise ValueError(f"prompt_ids must be a (batch, length) tensor, not one of shape {tuple(prompt_ids.shape)}")
    if prompt_mask is not None and prompt_mask.shape != prompt_ids.shape:
        raise ValueError(f"prompt_mask has shape {tuple(prompt_mask.shape)}, the prompts {tuple(prompt_ids.shape)}")
    rows = [r[m].tolist() for r, m in zip(prompt_ids, prompt_mask)] if prompt_mask is not None \
        else prompt_ids.tolist()
    if not rows or any(not r for r in rows):
        raise ValueError("the prompt is empty: give at least one token")
    return rows


def generate(model: torch.nn.Module, prompt_ids: torch.Tensor, *, prompt_mask: torch.Tensor | None = None,
             namer: Namer = python_name, **options: Any) -> GenerationResult:
    """Generate after each row of `prompt_ids` `# (B, P)` (prompt_mask `# (B, P)`: False on left padding).

    Options are those of unmask/decode/spec.py (`unmask generate --help` lists them): strategy (None: the
    model kind's default decoding), max_new_tokens (64), temperature, seed (row i samples with seed + i),
    stop_at_eos (True), block_size, steps, threshold, factor, confidence, cache, refresh_every,
    early_commit, early_commit_pool, verifier (a name or an AR model), accept, verifier_rule, add,
    activate, top_k, top_p. One a decoder does not take is refused (ValueError naming it).
    """
    options.setdefault("max_new_tokens", 64)
    prompts = row_prompts(prompt_ids, prompt_mask)
    t0 = time.perf_counter()
    done = decode_requests(model, prompts, options, namer, max_running=len(prompts))
    return result_of(model, done, time.perf_counter() - t0)


@dataclass
class Decoded:
    requests: list[Request]
    rows: list[Row]
    passes: int  # forward passes of the model
    seconds: float  # stepping the engine, after every request was prepared


def decode_requests(model: torch.nn.Module, prompts: list[list[int]], options: dict[str, Any], namer: Namer,
                    max_running: int, progress: str | None = None, stop: tuple[str, ...] = ()) -> Decoded:
    """Decode every prompt through one engine with at most `max_running` in flight (a finished request's
    slot refilled at once); prompt i samples with seed + i. Every refusal comes before any work; a request
    that fails raises RuntimeError. `progress`: a tqdm label, or None for no bar. `stop`: strings that end
    a request once its text holds one (its output ids then run past the stop: the caller cuts the text)."""
    options = dict(options)
    seed = options.pop("seed", None)
    params = [SamplingParams(namer, stop=stop, **options, seed=None if seed is None else (seed + i) % SEED_LIMIT)
              for i in range(len(prompts))]
    engine = Engine(model, max_running=max_running,
                    max_tokens=max_running * PagedKVCache.pages_needed(model.config.max_seq_len) * PAGE)
    prepared = [engine.prepare(p, q) for p, q in zip(prompts, params)]
    if len(prepared) <= max_running:
        engine.fit(sum(req.footprint for req, _ in prepared))  # KV storage for exactly this batch
    t0 = time.perf_counter()
    for req, row in prepared:
        engine.add_prepared(req, row)
    with tqdm(total=len(prepared), disable=progress is None, desc=progress, leave=False) as bar:
        while engine.has_work():
            bar.update(sum(out.finished for out in engine.step()))
    seconds = time.perf_counter() - t0
    failed = [req for req, _ in prepared if req.finish_reason == "error"]
    if failed:
        raise RuntimeError(f"decoding failed: {failed[0].error}")
    return Decoded([req for req, _ in prepared], [row for _, row in prepared], engine.runner.passes, seconds)


def result_of(model: torch.nn.Module, done: Decoded, seconds: float) -> GenerationResult:
    seqs = [req.output_ids for req in done.requests]
    width = max(len(s) for s in seqs)
    tokens = torch.tensor([s + [model.pad_token_id] * (width - len(s)) for s in seqs],
                          dtype=torch.long).reshape(len(seqs), width)  # (B, width)
    block_rows = [row.steps_used for row in done.rows if isinstance(row, BlockRow)]
    steps = [max(col) for col in zip_longest(*block_rows, fillvalue=0)]  # per block, the most any row took
    return GenerationResult(tokens, [len(s) for s in seqs], [r.ended_with_eos for r in done.rows], done.passes,
                            seconds, steps_per_block=steps, solo_nfe=[r.passes for r in done.rows])
