"""`unmask.generate`: one entry point for every model kind and decoder (the CLI calls it too).

It runs the same rows and runner as `unmask eval` and `unmask serve` (unmask/decode/rows/, unmask/engine/):
a batch is a set of requests stepped together, so each row gets the tokens it gets alone.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from unmask.decode.result import GenerationResult
from unmask.decode.rows.blocks import BlockRow
from unmask.decode.spec import DEFAULT_DECODING, SEED_LIMIT, Namer, python_name
from unmask.engine.engine import Engine
from unmask.engine.request import Request, SamplingParams
from unmask.models.paged_cache import PAGE


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
    seed = options.pop("seed", None)
    params = [SamplingParams(namer, **options, seed=None if seed is None else (seed + i) % SEED_LIMIT)
              for i in range(len(prompts))]
    t0 = time.perf_counter()
    engine = Engine(model, max_running=len(prompts), max_tokens=len(prompts) * (model.config.max_seq_len + PAGE))
    prepared = [engine.prepare(p, q) for p, q in zip(prompts, params)]  # refusals before any work
    engine.fit(sum(req.footprint for req, _ in prepared))  # KV storage for exactly this batch
    for req, row in prepared:
        engine.add_prepared(req, row)
    rows = [row for _, row in prepared]
    while engine.has_work():
        engine.step()
    failed = [req for req, _ in prepared if req.finish_reason == "error"]
    if failed:
        raise RuntimeError(f"decoding failed: {failed[0].error}")
    return result_of(model, [req for req, _ in prepared], rows, engine.runner.passes, time.perf_counter() - t0)


def result_of(model: torch.nn.Module, reqs: list[Request], rows: list, passes: int, seconds: float
              ) -> GenerationResult:
    seqs = [req.output_ids for req in reqs]
    width = max(len(s) for s in seqs)
    pad = model.pad_token_id
    tokens = torch.tensor([s + [pad] * (width - len(s)) for s in seqs],
                          dtype=torch.long).reshape(len(seqs), width)  # (B, width)
    steps: list[int] = []
    for row in rows:
        if isinstance(row, BlockRow):
            steps = [max(a, b) for a, b in zip(steps, row.steps_used)] + steps[len(row.steps_used):] \
                + row.steps_used[len(steps):]
    return GenerationResult(tokens, [len(s) for s in seqs], [r.ended_with_eos for r in rows], passes, seconds,
                            steps_per_block=steps, solo_nfe=[r.passes for r in rows])

