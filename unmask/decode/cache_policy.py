"""Approximate key/value caches for bidirectional models: which columns a denoising step recomputes.

A bidirectional model's keys and values change whenever any token changes, so no cache is
exact; these policies bet that they change little between neighbouring steps.

none     every step runs the whole sequence.
prefix   (Fast-dLLM) a block's first step runs everything and fills the cache; later steps run
         the block and everything after it against the cached prompt and earlier blocks.
dual     (Fast-dLLM) as prefix, but later steps run only the block: the suffix is cached too.
delayed  (dKV-Cache) a full run every `refresh_every` steps (default 8); between them, run the
         columns still masked plus those decoded by the previous step: a decoded token's keys and
         values enter the cache one step late, once it has been seen unmasked.

exact    (block-causal models) finished blocks' keys and values, committed once: no approximation.

`refresh_every` (prefix, dual: within a block; delayed: across the generation) forces a full
run every k steps; with k = 1 every option is exactly the uncached computation.
The cache itself is the `KVCache` object, updated in place through the model's `start` slots.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from unmask.models.kv_cache import KVCache


@dataclass
class Window:
    """The logits one step computed, and the column each of them scores."""

    logits: torch.Tensor  # (B, W, V)
    targets: torch.Tensor  # (W,) ascending column indices into the sequence

    def at(self, lo: int, hi: int) -> torch.Tensor:
        """Logits for columns [lo, hi) `# (B, hi-lo, V)`; a column outside the window gets a neighbour's
        (the loop only reads columns that are masked, and every masked column is in the window)."""
        idx = torch.searchsorted(self.targets, torch.arange(lo, hi, device=self.targets.device))
        return self.logits[:, idx.clamp(max=self.targets.numel() - 1)]


class CachePolicy:
    """No cache: every step is one full forward pass."""

    name = "none"

    def __init__(self, refresh_every: int | None = None) -> None:
        if refresh_every is not None and refresh_every < 1:
            raise ValueError(f"refresh_every must be at least 1, not {refresh_every}")
        self.refresh_every = refresh_every

    def start(self, model: torch.nn.Module, x: torch.Tensor, positions: torch.Tensor,
              valid: torch.Tensor | None, shift: bool) -> None:
        """Called once per generation, before the first step. shift: logits at i score column i+1 (Dream)."""
        self.model, self.positions, self.valid, self.shift = model, positions, valid, shift
        self.total = x.shape[1]
        self.cache: KVCache | None = None

    def step(self, x: torch.Tensor, block: tuple[int, int], block_step: int) -> Window:
        """Run the model for one denoising step of `block` (columns [s, e)); x `# (B, T)`."""
        return self.full(x, cached=False)

    def full(self, x: torch.Tensor, *, cached: bool = True) -> Window:
        if cached and self.cache is None:
            self.cache = KVCache.for_model(self.model, x.shape[0], self.total)
        logits = self.model(x, self.positions, valid=self.valid, cache=self.cache if cached else None)
        return self.window(logits, torch.arange(self.total, device=x.device))

    def partial(self, x: torch.Tensor, cols: torch.Tensor | slice) -> Window:
        """Run only `cols` (a slice, or ascending indices) against the cache; their slots are rewritten."""
        if isinstance(cols, slice):
            index = torch.arange(self.total, device=x.device)[cols]
            start: int | torch.Tensor = cols.start
        else:
            index = start = cols
        valid = self.valid[:, cols] if self.valid is not None else None
        logits = self.model(x[:, cols], self.positions[:, cols], valid=valid, cache=self.cache, start=start)
        return self.window(logits, index)

    def window(self, logits: torch.Tensor, cols: torch.Tensor) -> Window:
        if self.shift:  # logits at column c score column c+1; the last column scores nothing
            keep = cols + 1 < self.total
            return Window(logits[:, keep], cols[keep] + 1)
        return Window(logits, cols)

    def refresh_due(self, count: int) -> bool:
        return count == 0 or (self.refresh_every is not None and count % self.refresh_every == 0)


class PrefixCache(CachePolicy):
    name = "prefix"

    def step(self, x: torch.Tensor, block: tuple[int, int], block_step: int) -> Window:
        if self.refresh_due(block_step):
            return self.full(x)
        return self.partial(x, slice(block[0] - self.shift, self.total))


class DualCache(CachePolicy):
    name = "dual"

    def step(self, x: torch.Tensor, block: tuple[int, int], block_step: int) -> Window:
        if self.refresh_due(block_step):
            return self.full(x)
        return self.partial(x, slice(block[0] - self.shift, block[1] - self.shift))


class DelayedCache(CachePolicy):
    name = "delayed"
    DEFAULT_REFRESH = 8  # dKV-Cache's refresh interval

    def __init__(self, refresh_every: int | None = DEFAULT_REFRESH) -> None:
        super().__init__(refresh_every or self.DEFAULT_REFRESH)

    def start(self, model: torch.nn.Module, x: torch.Tensor, positions: torch.Tensor,
              valid: torch.Tensor | None, shift: bool) -> None:
        super().start(model, x, positions, valid, shift)
        self.mask_id = model.mask_token_id
        self.count = 0
        self.previous = x.clone()

    def step(self, x: torch.Tensor, block: tuple[int, int], block_step: int) -> Window:
        due = self.refresh_due(self.count)
        self.count += 1
        # Columns to recompute: still masked, or decoded since the last step, in any row.
        stale = ((x == self.mask_id) | (x != self.previous)).any(dim=0)  # (T,)
        self.previous = x.clone()
        if due:
            return self.full(x)
        if self.shift:  # the logits for column c come from column c-1: run both
            stale = stale | torch.cat([stale[1:], stale.new_zeros(1)])
        return self.partial(x, stale.nonzero().squeeze(1))


class ExactBlockCache(CachePolicy):
    """Block-causal models only: exact, not approximate. A block sees itself and earlier blocks, never
    later ones, so once every column of a model block is final its keys and values are too: they are
    committed once and never recomputed. Each step runs from the first uncommitted column to the end of
    the model block holding the decode block's last column; the previous decode block, now clean, rides
    along in the next block's first step and is committed by it (BD3-LM's cache, without an extra pass)."""

    name = "exact"

    def start(self, model: torch.nn.Module, x: torch.Tensor, positions: torch.Tensor,
              valid: torch.Tensor | None, shift: bool) -> None:
        if model.config.attention != "block-causal":
            raise ValueError(f"cache 'exact' needs a block-causal (block-diffusion) model; this one is "
                             f"{model.config.kind}: use prefix, dual or delayed")
        super().start(model, x, positions, valid, shift)
        self.block = model.config.block_size
        self.pad = (self.total - 1) - positions[:, -1]  # (B,) slots before position 0 (left padding)
        self.committed = 0  # slots [0, committed) hold final keys/values
        self.cache = KVCache.for_model(model, x.shape[0], self.total)

    def step(self, x: torch.Tensor, block: tuple[int, int], block_step: int) -> Window:
        s, e = block[0] - self.shift, block[1] - self.shift
        # The model block holding column e-1 ends at (position // size + 1) * size, per row; run up to the last.
        end = int(((((e - 1) - self.pad) // self.block + 1) * self.block + self.pad).max())
        start = self.committed
        self.cache.trim(start)
        window = self.partial(x, slice(start, min(end, self.total)))
        # Columns before the model block holding s saw only clean, earlier blocks: final now.
        self.committed = max(self.committed, int(((s - self.pad) // self.block * self.block + self.pad).clamp(min=0).min()))
        return window


CACHES: dict[str, type[CachePolicy]] = {"none": CachePolicy, "prefix": PrefixCache, "dual": DualCache,
                                        "delayed": DelayedCache, "exact": ExactBlockCache}


def make_cache(name: str | None, refresh_every: int | None = None) -> CachePolicy:
    name = name or "none"
    if name not in CACHES:
        raise ValueError(f"unknown cache {name!r}; known caches: {', '.join(CACHES)}")
    if name == "none" and refresh_every is not None:
        raise ValueError("refresh_every needs a cache (prefix, dual or delayed)")
    return CACHES[name](refresh_every)
