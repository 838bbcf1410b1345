"""Block decoding on the model's own block grid, as the published block-diffusion families decode.

SDAR, LLaDA2 and Fast-dLLM v2 attend block-causally on blocks that start at position 0, and decode
those same blocks: the first one holds the prompt's tail and the answer's first tokens, and the canvas
runs to the end of the block holding the answer's last token. The answer is its first `max_new_tokens`
tokens; the row ends once they are final (the rest of a last block is never decoded further).

A model with shifted logits (Fast-dLLM v2: column i scores token i + 1) fills a block's first position
autoregressively before the block's denoising: one pass over the finished previous block, whose last
column's argmax is the token (Fast-dLLM v2's commit pass, which writes that block's keys and values).
With the exact cache each denoising step then runs the block (and the column before it) against the
cache, as the families' own code does; `cache='none'` reruns the whole canvas, LLaDA2's uncached way.
"""
from __future__ import annotations

import torch

from unmask.decode.rows.base import Work
from unmask.decode.rows.blocks import DONE, SCORE, BlockRow
from unmask.decode.spec import Decoding


class AlignedBlockRow(BlockRow):
    def layout(self, cfg, d: Decoding) -> tuple[int, list[tuple[int, int]], list[int], int | None]:
        B = d.block_size
        T = -(-(self.P + d.max_new_tokens) // B) * B  # the grid's end after the answer's last token
        if T > cfg.max_seq_len:
            raise ValueError(f"the block grid of {B} ends at {T} tokens for this prompt and max_new_tokens, beyond "
                             f"this model's context of {cfg.max_seq_len}")
        spans = [(k * B, (k + 1) * B) for k in range(self.P // B, T // B)]
        return T, spans, [B] * len(spans), B

    def begin_block(self) -> None:
        super().begin_block()
        s = self.spans[self.block][0]
        self.needs_ar = self.shift and bool(self.x[s] == self.mask_id)

    def work(self) -> Work | None:
        if self.done or self.phase == DONE or not self.needs_ar:
            return super().work()
        s = self.spans[self.block][0]
        lo = self.columns.committed if self.columns.cache == "exact" else 0
        self.ran = Work(self.x[lo:s], lo, s, block_size=self.attention_block)
        return self.ran

    def take(self, logits: torch.Tensor) -> None:
        if not self.needs_ar:
            super().take(logits)
            return
        self.passes += 1
        s = self.spans[self.block][0]
        last = logits[-1].clone()  # (V,): the previous block's last column scores position s
        last[self.mask_id] = float("-inf")
        self.x[s] = last.argmax()
        self.note([s - self.P], self.x[s:s + 1], last[None])
        if self.columns.cache == "exact":
            self.columns.committed = s  # every block before s is final: its keys and values stay
        self.needs_ar, self.phase = False, DONE
        if not self.has_masks(self.block):
            self.next_block()
        self.settle()
