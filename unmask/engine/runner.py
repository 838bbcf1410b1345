"""Owns every tensor of the engine: per-request rows, the batched forward pass, the step rules.

Diffusion: each running request keeps its own sequence and its own place (block, step); one
forward pass over all of them (left-padded to a common width, padding never attended) advances
every request by one denoising step of its current block, so requests at different stages and
with different rules step together. A bidirectional row only sees itself, so a request's tokens
are the ones `unmask.generate` gives it alone (same rule, no cache).

Block-causal rows (block diffusion, D2F students) keep their finished blocks' keys and values, exactly
(engine/exact_rows.py): a pass runs only each row's unfinished blocks. They step by a rule or by the D2F
pipeline (several blocks in flight), and give the tokens `unmask.generate` gives them alone.

AR: each request keeps its keys and values; one batched forward decodes one token for every
running request, their caches laid right-aligned in one `KVCache` for that pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from unmask.decode.pipeline import D2F_DEFAULTS, PipelineRow, check_d2f
from unmask.decode.registry import D2F_STRATEGY, make_strategy
from unmask.decode.sampling import gumbel_argmax, sample_next
from unmask.decode.schedule import block_spans, steps_per_block
from unmask.decode.strategies.base import Strategy
from unmask.engine.exact_rows import ExactPrefix, forward_windows, plan_passes, window_for
from unmask.engine.request import Request, RequestOutput
from unmask.generation import check_request, default_block_size, with_defaults
from unmask.models.kv_cache import KVCache


@dataclass
class DiffusionRow:
    x: torch.Tensor  # (P+N,) the prompt, then the generated span (masks until committed)
    prompt_len: int
    spans: list[tuple[int, int]]  # absolute [s, e) of each block
    budgets: list[int]
    strategy: Strategy
    generator: torch.Generator | None
    cached: bool = False  # dual cache: keys/values of the whole row, refreshed at each block's first step
    block: int = 0
    step: int = 0
    emitted: int = 0
    k: torch.Tensor | None = None  # (n_layers, Hkv, P+N, D)
    v: torch.Tensor | None = None
    exact: ExactPrefix | None = None  # block-causal models: the finished blocks' keys and values


@dataclass
class PipelineDiffusionRow:
    """A block-causal row decoded by the D2F pipeline: the rule's state and the row's exact prefix."""

    pipe: PipelineRow
    exact: ExactPrefix = field(default_factory=ExactPrefix)
    emitted: int = 0

    @property
    def x(self) -> torch.Tensor:
        return self.pipe.x

    @property
    def prompt_len(self) -> int:
        return self.pipe.P


@dataclass
class ARRow:
    prompt: torch.Tensor  # (P,)
    generator: torch.Generator | None
    k: torch.Tensor | None = None  # (n_layers, Hkv, len, D)
    v: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (V,) for the next token
    generated: list[int] = field(default_factory=list)


Row = DiffusionRow | PipelineDiffusionRow | ARRow


class Runner:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.ar = model.config.kind == "ar"
        self.mask_id, self.eos_id, self.pad_id = model.mask_token_id, model.eos_token_id, model.pad_token_id
        self.shift = bool(getattr(model.config, "logits_shift", False))
        self.rows: dict[str, Row] = {}
        self.passes = 0  # forward passes run so far (a step may run several: prefills, groups of widths)

    # -- request lifecycle ---------------------------------------------------------------------------
    def adopt(self, request_id: str, row: Row) -> None:
        self.rows[request_id] = row

    def build(self, req: Request) -> Row:
        """Validate a request and build its row, changing nothing here (safe beside a running step);
        raises ValueError with one sentence if it cannot run."""
        p = req.params
        strategy, cache, options = with_defaults(self.model, p.strategy, p.cache, dict(p.options))
        prompt = torch.tensor([req.prompt_ids], dtype=torch.long)
        check_request(self.model, prompt, p.max_new_tokens, strategy)
        gen = torch.Generator().manual_seed(p.seed) if p.seed is not None else None
        if self.ar:
            if strategy != "ar":
                raise ValueError(f"the engine decodes autoregressive models with strategy 'ar', not {strategy!r}")
            unknown = sorted(set(options) - {"top_k", "top_p"})
            if unknown:
                raise ValueError(f"strategy 'ar' does not take {', '.join(unknown)}")
            return ARRow(prompt[0], gen)
        block_causal = self.model.config.attention == "block-causal"
        if block_causal and cache not in (None, "exact"):
            raise ValueError(f"a block-causal model is cached exactly (cache 'exact', the engine's only one for it), "
                             f"not {cache!r}")
        if not block_causal and cache not in (None, "dual"):
            raise ValueError(f"the engine offers cache 'dual' or none, not {cache!r}")
        N, P = p.max_new_tokens, len(req.prompt_ids)
        if strategy == D2F_STRATEGY:
            unknown = sorted(set(options) - set(D2F_DEFAULTS))
            if unknown or p.steps is not None:
                raise ValueError(f"strategy 'd2f' takes {', '.join(D2F_DEFAULTS)}, not "
                                 f"{', '.join(unknown) or 'steps'}")
            rule = {**D2F_DEFAULTS, **options}
            check_d2f(self.model, rule["threshold"], rule["add"], rule["activate"])
            return PipelineDiffusionRow(PipelineRow(
                self.model, prompt[0], N, **rule, temperature=p.temperature, stop_at_eos=p.stop_at_eos, generator=gen))
        rule = make_strategy(strategy, **options)
        block = min(p.block_size or default_block_size(self.model), N)
        x = torch.cat([prompt[0], torch.full((N,), self.mask_id, dtype=torch.long)])
        return DiffusionRow(x, P, [(P + s, P + e) for s, e in block_spans(N, block)],
                            steps_per_block(N, block, p.steps), rule, gen, cache == "dual",
                            exact=ExactPrefix() if block_causal else None)

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
        """Rows without a usable cache run whole (left-padded together); cached rows run only their block,
        grouped by block length; block-causal rows run their windows after their exact prefixes (rows of
        similar width together). Then every row applies its own rule to its block's logits."""
        rows = {r.request_id: self.rows[r.request_id] for r in requests}
        if self.model.config.attention == "block-causal":
            return self.step_block_causal(requests, rows)
        full = [r for r in requests if not rows[r.request_id].cached or rows[r.request_id].step == 0]
        logits: dict[str, torch.Tensor] = {}
        if full:
            logits.update(self.forward_full(full, rows))
        by_length: dict[int, list[Request]] = {}
        for r in requests:
            if r.request_id not in logits:
                s, e = rows[r.request_id].spans[rows[r.request_id].block]
                by_length.setdefault(e - s, []).append(r)
        for group in by_length.values():
            logits.update(self.forward_block(group, rows))
        return [self.apply_rule(r, rows[r.request_id], logits[r.request_id]) for r in requests]

    def step_block_causal(self, requests: list[Request], rows: dict[str, DiffusionRow | PipelineDiffusionRow]
                          ) -> list[RequestOutput]:
        """Rows of similar window widths share a pass (a row that is prefilling its prompt would make every
        other row pad up to its width); each row's window runs after its exact prefix."""
        seqs = [rows[r.request_id] for r in requests]
        spans = [row.pipe.span() if isinstance(row, PipelineDiffusionRow) else row.spans[row.block] for row in seqs]
        size = self.model.config.block_size
        cols = [window_for(row.exact, sp, size, row.x.numel()) for row, sp in zip(seqs, spans)]  # before commits
        windows: list[torch.Tensor | None] = [None] * len(seqs)
        for group in plan_passes([e - c for c, e in cols]):
            self.passes += 1
            got = forward_windows(self.model, [seqs[i].x for i in group], [seqs[i].exact for i in group],
                                  [spans[i] for i in group], [cols[i] for i in group])
            for i, logits in zip(group, got):
                windows[i] = logits
        outs = []
        for req, row, (s, e), (c, _), logits in zip(requests, seqs, spans, cols, windows):
            if isinstance(row, PipelineDiffusionRow):
                row.pipe.apply(lambda bs, be: logits[bs - c:be - c])
                outs.append(self.advance_pipeline(req, row))
            else:
                outs.append(self.apply_rule(req, row, logits[s - c:e - c]))
        return outs

    def advance_pipeline(self, req: Request, row: PipelineDiffusionRow) -> RequestOutput:
        if row.pipe.span() is not None:
            return self.emit(req, row, finished=False)
        gen = row.x[row.prompt_len:]
        ended = req.params.stop_at_eos and self.eos_id is not None and bool((gen == self.eos_id).any())
        return self.emit(req, row, finished=True, reason="stop" if ended else "length")

    def forward_full(self, requests: list[Request], rows: dict[str, DiffusionRow]) -> dict[str, torch.Tensor]:
        """Whole rows, left-padded into one batch; cached rows keep their keys/values for the block's later steps."""
        seqs = [rows[r.request_id] for r in requests]
        width = max(row.x.numel() for row in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)  # (B, W)
        valid = torch.zeros(len(seqs), width, dtype=torch.bool)
        for i, row in enumerate(seqs):
            ids[i, width - row.x.numel():] = row.x
            valid[i, width - row.x.numel():] = True
        positions = (valid.long().cumsum(dim=1) - 1).clamp(min=0)
        cache = KVCache.for_model(self.model, len(seqs), width) if any(row.cached for row in seqs) else None
        self.passes += 1
        logits = self.model(ids, positions, valid=None if bool(valid.all()) else valid, cache=cache)  # (B, W, V)
        out = {}
        for i, (req, row) in enumerate(zip(requests, seqs)):
            pad = width - row.x.numel()
            s, e = row.spans[row.block]
            out[req.request_id] = logits[i, pad + s - self.shift:pad + e - self.shift]  # (Lb, V)
            if row.cached:
                row.k, row.v = cache.k[:, i, :, pad:].clone(), cache.v[:, i, :, pad:].clone()
        return out

    def forward_block(self, requests: list[Request], rows: dict[str, DiffusionRow]) -> dict[str, torch.Tensor]:
        """Only each row's current block (equal lengths), against its cached prefix and suffix.

        Rows are laid out so their blocks share slots [S, S+Lb): row i starts at slot S - s_i.
        """
        seqs = [rows[r.request_id] for r in requests]
        lo = [row.spans[row.block][0] - self.shift for row in seqs]  # first query column of each row
        n = rows[requests[0].request_id].spans[rows[requests[0].request_id].block]
        Lb = n[1] - n[0]
        S = max(lo)
        width = S + max(row.x.numel() - l for row, l in zip(seqs, lo))
        cache = KVCache.for_model(self.model, len(seqs), width)
        for i, (row, l) in enumerate(zip(seqs, lo)):
            o, T = S - l, row.x.numel()
            cache.k[:, i, :, o:o + T], cache.v[:, i, :, o:o + T] = row.k, row.v
            cache.positions[i, o:o + T] = torch.arange(T)
            cache.valid[i, o:o + T] = True
        cache.length = width
        ids = torch.stack([row.x[l:l + Lb] for row, l in zip(seqs, lo)])  # (B, Lb)
        positions = torch.stack([torch.arange(l, l + Lb) for l in lo])
        self.passes += 1
        logits = self.model(ids, positions, cache=cache, start=S)  # (B, Lb, V)
        return {r.request_id: logits[i] for i, r in enumerate(requests)}

    def apply_rule(self, req: Request, row: DiffusionRow, block_logits: torch.Tensor) -> RequestOutput:
        s, e = row.spans[row.block]
        block = row.x[s:e]  # a view into the row
        masked = block == self.mask_id
        if row.step == 0:
            row.strategy.begin_block(masked[None], row.budgets[row.block])
        block_logits = block_logits[None]  # (1, Lb, V)
        x0 = gumbel_argmax(block_logits, req.params.temperature, row.generator, forbid=self.mask_id)
        conf = row.strategy.confidence(block_logits, x0, row.generator).masked_fill(~masked[None], float("-inf"))
        commit = (row.strategy.select(row.step, conf, masked[None]) & masked[None])[0]
        block[commit] = x0[0][commit]
        row.step += 1
        return self.advance_diffusion(req, row)

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

    def emit(self, req: Request, row: DiffusionRow | PipelineDiffusionRow, *, finished: bool,
             reason: str | None = None) -> RequestOutput:
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
            self.passes += 1
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
        self.passes += 1
        logits = self.model(tokens, positions, cache=cache, start=width)[:, -1]  # (B, V)
        for i, row in enumerate(rows):
            row.logits = logits[i]
            row.k = torch.cat([row.k, cache.k[:, i, :, width:width + 1]], dim=2)
            row.v = torch.cat([row.v, cache.v[:, i, :, width:width + 1]], dim=2)
