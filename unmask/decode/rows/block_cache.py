"""Which columns a block-decoding step runs, by cache: the only place a cache's rule lives.

A bidirectional model's keys and values change whenever any token changes, so no cache is exact
for it; the approximate ones bet that they change little between neighbouring steps:
none     every step runs the whole sequence.
prefix   (Fast-dLLM) a block's first step runs everything and fills the cache; later steps run
         the block and everything after it against the cached prompt and earlier blocks.
dual     (Fast-dLLM) as prefix, but later steps run only the block: the suffix is cached too.
delayed  (dKV-Cache) a full run every `refresh_every` steps (default 8); between them, run the
         columns still masked plus those decoded by the previous step: a decoded token's keys and
         values enter the cache one step late, once it has been seen unmasked.
exact    (block-causal models) a block sees itself and earlier blocks, never later ones, so once
         every column of a model block is final its keys and values are too: committed once, never
         recomputed. Each step runs from the first uncommitted column to the end of the model block
         holding the decode block's last column; the previous decode block, now clean, rides along in
         the next block's first step and is committed by it (BD3-LM's cache, without an extra pass).

`refresh_every` (prefix, dual: within a block; delayed: across the generation) forces a full run
every k steps; with k = 1 every approximate cache is exactly the uncached computation. The keys and
values themselves live in the row's slot of the engine's KV storage; this says only what to recompute.
"""
from __future__ import annotations

import torch


def model_block_end(col: int, size: int, total: int) -> int:
    """End of the model block holding column `col` (positions are columns: rows are never padded)."""
    return min((col // size + 1) * size, total)


class BlockColumns:
    def __init__(self, cache: str, refresh_every: int | None, total: int, shift: bool, model_block: int | None,
                 mask_id: int) -> None:
        self.cache, self.refresh_every, self.total = cache, refresh_every, total
        self.shift, self.model_block, self.mask_id = int(shift), model_block, mask_id
        self.count = 0  # delayed: steps so far, across blocks
        self.committed = 0  # exact: slot columns [0, committed) hold final keys and values
        self.previous: torch.Tensor | None = None  # delayed: the tokens at the last step

    def next(self, x: torch.Tensor, block: tuple[int, int], block_step: int
             ) -> tuple[int, int, torch.Tensor | None, int]:
        """(start, end, scattered columns or None, keys) for one step of `block` (columns [s, e)); x `# (T,)`."""
        T, sh = self.total, self.shift
        s, e = block[0] - sh, block[1] - sh  # the columns whose logits score the block
        if self.cache == "none":
            return 0, T, None, T
        if self.cache == "exact":
            end = model_block_end(e - 1, self.model_block, T)
            # From the first uncommitted column, or from the column scoring the block's first position when a
            # shifted model has committed it already (rerun: same inputs, same keys and values).
            lo = min(self.committed, max(s, 0))
            return lo, end, None, end
        if self.cache == "delayed":
            due = self.due(self.count)
            self.count += 1
            # Recompute what is still masked or was decoded since the last step.
            stale = (x == self.mask_id) if self.previous is None else (x == self.mask_id) | (x != self.previous)
            self.previous = x.clone()
            if due:
                return 0, T, None, T
            if sh:  # the logits for column c come from column c-1: run both
                stale = stale | torch.cat([stale[1:], stale.new_zeros(1)])
            cols = stale.nonzero().squeeze(1)
            return int(cols[0]), int(cols[-1]) + 1, cols, T
        if self.due(block_step):
            return 0, T, None, T
        return (s, T, None, T) if self.cache == "prefix" else (s, e, None, T)

    def due(self, count: int) -> bool:
        return count == 0 or (self.refresh_every is not None and count % self.refresh_every == 0)

    def ran(self, block: tuple[int, int]) -> None:
        """After a step's pass: exact caches commit the columns before the model block holding the block's
        first scored column, which saw only clean, earlier blocks."""
        if self.cache == "exact":
            first = block[0] - self.shift
            self.committed = max(self.committed, first // self.model_block * self.model_block)
