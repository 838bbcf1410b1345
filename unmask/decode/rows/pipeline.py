"""D2F pipelined decoding of one request: several blocks of a block-causal model in flight at once.

Blocks follow the model's own block grid (the first may be cut short by the prompt). The last block
in flight gets a successor once its decoded share passes `add` (tau_add), before it is finished; a
block is fully active once its predecessor's decoded share passes `activate` (tau_act), and the first
unfinished block always is. Each step, every block in flight commits its masked positions whose
confidence reaches `threshold` (tau_conf); a fully active block commits at least its most confident
one. One forward pass serves every block in flight: they sit in one window after the committed
prefix, whose keys and values are cached exactly (a finished block never sees later ones).
With `add` >= 1 no block starts before its predecessor is finished: plain block-by-block decoding.
"""
from __future__ import annotations

import torch

from unmask.decode.confidence import get_measure
from unmask.decode.rows.base import MAIN, Row, Work, final_prefix
from unmask.decode.rows.block_cache import model_block_end
from unmask.decode.sampling import gumbel_argmax
from unmask.decode.spec import Decoding


def grid_blocks(prompt_len: int, total: int, size: int) -> list[tuple[int, int]]:
    """The generated span [prompt_len, total) cut at multiples of the model's block size."""
    cuts = sorted({prompt_len, total, *range(size * (prompt_len // size + 1), total, size)})
    return list(zip(cuts[:-1], cuts[1:]))


class PipelineRow(Row):
    def __init__(self, model: torch.nn.Module, prompt: torch.Tensor, d: Decoding,
                 generator: torch.Generator | None) -> None:
        super().__init__(d.max_new_tokens, model.eos_token_id, d.stop_at_eos)
        self.mask_id = model.mask_token_id
        self.size = model.config.block_size
        self.P = prompt.numel()
        self.x = torch.cat([prompt, torch.full((d.max_new_tokens,), self.mask_id, dtype=torch.long,
                                               device=prompt.device)])  # (T,)
        self.T = self.x.numel()
        self.blocks = grid_blocks(self.P, self.T, self.size)
        self.threshold, self.add, self.activate = d.threshold, d.add, d.activate
        self.measure, self.temperature, self.generator = get_measure(d.confidence), d.temperature, generator
        self.top_k, self.top_p = d.top_k, d.top_p
        self.left = [e - s for s, e in self.blocks]  # masked positions per block (counted, not recomputed)
        self.added = 1  # blocks in flight or done
        self.committed = 0  # slot columns [0, committed) hold final keys and values
        self.footprint = {MAIN: self.T}
        self.window: tuple[int, int] | None = None  # the span the last work scored
        self.busy = False  # this step's pass ran

    def share(self, k: int) -> float:
        """Decoded share of block k."""
        s, e = self.blocks[k]
        return 1.0 - self.left[k] / (e - s)

    def ended(self, upto: int) -> bool:
        return self.stop_at_eos and bool((self.x[self.P:upto] == self.eos_id).any())

    def span(self) -> tuple[int, int] | None:
        """[first unfinished block's start, last block in flight's end): the columns the next pass scores;
        None when every block is done."""
        while True:
            first = next((k for k in range(self.added) if self.left[k]), None)
            if first is not None:
                return self.blocks[first][0], self.blocks[self.added - 1][1]
            if self.added == len(self.blocks) or self.ended(self.blocks[self.added - 1][1]):
                return None
            self.added += 1  # the pipeline ran dry: start the next block

    def work(self) -> Work | None:
        if self.done or self.busy:
            return None
        self.window = self.span()
        end = model_block_end(self.window[1] - 1, self.size, self.T)
        return Work(self.x[self.committed:end], self.committed, end)

    def take(self, logits: torch.Tensor) -> None:
        """Commit from one pass over columns [committed, end): logits `# (end - committed, V)`."""
        self.passes += 1
        self.busy = True
        s, e = self.window
        c = self.committed
        first = next(k for k in range(self.added) if self.blocks[k][0] == s)
        # One proposal and one confidence for the whole span: every block in flight reads its slice.
        span_logits = logits[s - c:e - c][None]  # (1, e-s, V)
        x0 = gumbel_argmax(span_logits, self.temperature, self.generator, forbid=self.mask_id, top_k=self.top_k,
                           top_p=self.top_p)[0]  # (e-s,)
        scores = self.measure(span_logits, x0[None])[0]  # (e-s,)
        for k in range(first, self.added):
            if not self.left[k]:
                continue
            bs, be = self.blocks[k]
            masked = self.x[bs:be] == self.mask_id
            conf = scores[bs - s:be - s].masked_fill(~masked, float("-inf"))
            commit = masked & (conf >= self.threshold)
            if (k == first or self.share(k - 1) > self.activate) and not commit.any():
                commit[conf.argmax()] = True
            self.x[bs:be][commit] = x0[bs - s:be - s][commit]
            if self.noting:
                idx = commit.nonzero()[:, 0]
                self.note((bs - self.P + idx).tolist(), x0[bs - s:be - s][idx], span_logits[0, bs - s:be - s][idx])
            self.left[k] -= int(commit.sum())
        # Columns before the model block holding s saw only clean, earlier blocks: final now.
        self.committed = max(c, s // self.size * self.size)
        if self.added < len(self.blocks) and self.share(self.added - 1) > self.add and not self.ended(e):
            self.added += 1
        self.extend(final_prefix(self.x, self.P + len(self.final), self.mask_id))
        if not self.done and self.span() is None:
            self.finish("length")

    def next_step(self) -> None:
        self.busy = False
