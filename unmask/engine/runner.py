"""Owns every tensor of the engine: per-request rows, the batched forward pass, the step rules.

Diffusion: each running request keeps its own sequence and its own place (block, step); one
forward pass over all of them (left-padded to a common width, padding never attended) advances
every request by one denoising step of its current block, so requests at different stages and
with different rules step together. A bidirectional row only sees itself, so a request's tokens
are the ones `unmask.generate` gives it alone (same rule, no cache).

AR: each request keeps its keys and values; one batched forward decodes one token for every
running request, their caches laid right-aligned in one `KVCache` for that pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from unmask.decode.registry import make_strategy
from unmask.decode.sampling import gumbel_argmax, sample_next
from unmask.decode.schedule import block_spans, steps_per_block
from unmask.decode.strategies.base import Strategy
from unmask.engine.request import Request, RequestOutput
from unmask.generation import DEFAULT_BLOCK_SIZE, check_request, default_strategy
from unmask.models.kv_cache import KVCache


@dataclass
class DiffusionRow:
    x: torch.Tensor  # (P+N,) the prompt, then the generated span (masks until committed)
    prompt_len: int
    spans: list[tuple[int, int]]  # absolute [s, e) of each block
    budgets: list[int]
    strategy: Strategy
    generator: torch.Generator | None
    block: int = 0
    step: int = 0
    emitted: int = 0


@dataclass
class ARRow:
    prompt: torch.Tensor  # (P,)
    generator: torch.Generator | None
    k: torch.Tensor | None = None  # (n_layers, Hkv, len, D)
    v: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (V,) for the next token
    generated: list[int] = field(default_factory=list)


class Runner:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.ar = model.config.kind == "ar"
        self.mask_id, self.eos_id, self.pad_id = model.mask_token_id, model.eos_token_id, model.pad_token_id
        self.shift = bool(getattr(model.config, "logits_shift", False))
        self.rows: dict[str, DiffusionRow | ARRow] = {}

    # -- request lifecycle ---------------------------------------------------------------------------
    def admit(self, req: Request) -> None:
        """Validate a request and build its row; raises ValueError with one sentence if it cannot run."""
        p = req.params
        strategy = p.strategy or default_strategy(self.model)
        prompt = torch.tensor([req.prompt_ids], dtype=torch.long)
        check_request(self.model, prompt, p.max_new_tokens, strategy)
        gen = torch.Generator().manual_seed(p.seed) if p.seed is not None else None
        if self.ar:
            if p.options:
                raise ValueError(f"strategy 'ar' does not take {', '.join(sorted(p.options))}")
            self.rows[req.request_id] = ARRow(prompt[0], gen)
            return
        rule = make_strategy(strategy, **p.options)
        N, P = p.max_new_tokens, len(req.prompt_ids)
        block = min(p.block_size or DEFAULT_BLOCK_SIZE, N)
        x = torch.cat([prompt[0], torch.full((N,), self.mask_id, dtype=torch.long)])
        self.rows[req.request_id] = DiffusionRow(x, P, [(P + s, P + e) for s, e in block_spans(N, block)],
                                                 steps_per_block(N, block, p.steps), rule, gen)

    def release(self, request_id: str) -> None:
        self.rows.pop(request_id, None)

    # -- one engine step ----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, requests: list[Request]) -> list[RequestOutput]:
        live = [r for r in requests if r.request_id in self.rows]
        if not live:
            return []
        outs = self.step_ar(live) if self.ar else self.step_diffusion(live)
        for r in live:
            r.nfe += 1
        return outs

    def step_diffusion(self, requests: list[Request]) -> list[RequestOutput]:
        rows = [self.rows[r.request_id] for r in requests]
        width = max(row.x.numel() for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)  # (B, W), left-padded
        valid = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, width - row.x.numel():] = row.x
            valid[i, width - row.x.numel():] = True
        positions = (valid.long().cumsum(dim=1) - 1).clamp(min=0)
        logits = self.model(ids, positions, valid=None if bool(valid.all()) else valid)  # (B, W, V)
        outs = []
        for i, (req, row) in enumerate(zip(requests, rows)):
            pad = width - row.x.numel()
            s, e = row.spans[row.block]
            block = row.x[s:e]  # a view into the row
            masked = block == self.mask_id
            if row.step == 0:
                row.strategy.begin_block(masked[None], row.budgets[row.block])
            lo = pad + s - 1 if self.shift else pad + s
            block_logits = logits[i:i + 1, lo:lo + (e - s)]  # (1, Lb, V)
            x0 = gumbel_argmax(block_logits, req.params.temperature, row.generator, forbid=self.mask_id)
            conf = row.strategy.confidence(block_logits, x0, row.generator).masked_fill(~masked[None], float("-inf"))
            commit = (row.strategy.select(row.step, conf, masked[None]) & masked[None])[0]
            block[commit] = x0[0][commit]
            row.step += 1
            outs.append(self.advance_diffusion(req, row))
        return outs

    def advance_diffusion(self, req: Request, row: DiffusionRow) -> RequestOutput:
        """Move a row to its next block when this one is full; report tokens that became final, in order."""
        s, e = row.spans[row.block]
        if bool((row.x[s:e] == self.mask_id).any()):
            return self.emit(req, row, finished=False)
        row.block, row.step = row.block + 1, 0
        gen = row.x[row.prompt_len:e]
        if req.params.stop_at_eos and self.eos_id is not None and bool((gen == self.eos_id).any()):
            return self.emit(req, row, finished=True, reason="stop")
        return self.emit(req, row, finished=row.block == len(row.spans), reason="length")

    def emit(self, req: Request, row: DiffusionRow, *, finished: bool, reason: str | None = None) -> RequestOutput:
        gen = row.x[row.prompt_len:].tolist()
        final = gen.index(self.mask_id) if self.mask_id in gen else len(gen)  # committed prefix
        if req.params.stop_at_eos and self.eos_id in gen[:final]:
            final = gen.index(self.eos_id)
        new = gen[row.emitted:final]
        row.emitted = final
        return RequestOutput(req.request_id, new, finished, reason if finished else None)

    def step_ar(self, requests: list[Request]) -> list[RequestOutput]:
        rows = [self.rows[r.request_id] for r in requests]
        fresh = [row for row in rows if row.logits is None]
        for req, row in zip(requests, rows):
            if row.logits is None:
                req.nfe += 1  # its prefill: a forward of its own
        for row in fresh:  # prefill, one request at a time: prompts differ in length
            cache = KVCache.for_model(self.model, 1, row.prompt.numel())
            row.logits = self.model(row.prompt[None], cache=cache)[0, -1]
            row.k, row.v = cache.k[:, 0], cache.v[:, 0]  # (n_layers, Hkv, P, D)
        outs, going = [], []
        for req, row in zip(requests, rows):
            p = req.params
            nxt = int(sample_next(row.logits[None], temperature=p.temperature, top_k=p.options.get("top_k"),
                                  top_p=p.options.get("top_p"), generator=row.generator)[0])
            if p.stop_at_eos and nxt == self.eos_id:
                outs.append(RequestOutput(req.request_id, [], True, "stop"))
                continue
            row.generated.append(nxt)
            done = len(row.generated) == p.max_new_tokens
            outs.append(RequestOutput(req.request_id, [nxt], done, "length" if done else None))
            if not done:
                going.append(row)
        if going:
            self.decode_ar(going)
        return outs

    def decode_ar(self, rows: list[ARRow]) -> None:
        """One batched forward of each row's newest token against its own cached keys and values."""
        lengths = [row.k.shape[2] for row in rows]
        width = max(lengths)
        cache = KVCache.for_model(self.model, len(rows), width + 1)
        for i, (row, n) in enumerate(zip(rows, lengths)):  # right-aligned: the new token shares slot `width`
            cache.k[:, i, :, width - n:width] = row.k
            cache.v[:, i, :, width - n:width] = row.v
            cache.positions[i, width - n:width] = torch.arange(n)
            cache.valid[i, width - n:width] = True
        cache.length = width
        tokens = torch.tensor([[row.generated[-1]] for row in rows])  # (B, 1)
        positions = torch.tensor([[n] for n in lengths])
        logits = self.model(tokens, positions, cache=cache, start=width)[:, -1]  # (B, V)
        for i, row in enumerate(rows):
            row.logits = logits[i]
            row.k = torch.cat([row.k, cache.k[:, i, :, width:width + 1]], dim=2)
            row.v = torch.cat([row.v, cache.v[:, i, :, width:width + 1]], dim=2)
