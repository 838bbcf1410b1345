"""D2F pipelined decoding: several blocks of a block-causal model in flight at once.

Blocks follow the model's own block grid (the first may be cut short by the prompt). The last block
in flight gets a successor once its decoded share passes `add` (tau_add), before it is finished; a
block is fully active once its predecessor's decoded share passes `activate` (tau_act), and the first
unfinished block always is. Each step, every block in flight commits its masked positions whose
confidence reaches `threshold` (tau_conf); a fully active block commits at least its most confident
one. One forward pass serves every block in flight: they sit in one window after the committed
prefix, whose keys and values are cached exactly (a finished block never sees later ones).
With `add` >= 1 no block starts before its predecessor is finished: plain block-by-block decoding.

`PipelineRow` is the rule for one row and never runs the model: `unmask.generate` drives it one row
at a time here (their prompts put the block grid at different offsets), the engine's runner drives
many rows through one batched forward pass.
"""
from __future__ import annotations

from typing import Callable

import torch

from unmask.decode.cache_policy import ExactBlockCache
from unmask.decode.confidence import get_measure
from unmask.decode.result import GenerationResult, decode_each_row
from unmask.decode.sampling import gumbel_argmax

D2F_DEFAULTS = {"threshold": 0.9, "add": 0.1, "activate": 0.95, "confidence": "prob"}


def grid_blocks(prompt_len: int, total: int, size: int) -> list[tuple[int, int]]:
    """The generated span [prompt_len, total) cut at multiples of the model's block size."""
    cuts = sorted({prompt_len, total, *range(size * (prompt_len // size + 1), total, size)})
    return list(zip(cuts[:-1], cuts[1:]))


def check_d2f(model: torch.nn.Module, threshold: float, add: float, activate: float) -> None:
    if model.config.attention != "block-causal":
        raise ValueError(f"strategy 'd2f' needs a block-causal (block-diffusion) model; this one is {model.config.kind}")
    for name, v in (("threshold", threshold), ("add", add), ("activate", activate)):
        if not 0 < v <= 1.01:
            raise ValueError(f"{name} must be in (0, 1], not {v}")


class PipelineRow:
    """One row's pipeline: which columns the next pass must score (`span`), and what it commits (`apply`)."""

    def __init__(self, model: torch.nn.Module, prompt: torch.Tensor, max_new_tokens: int, *, threshold: float,
                 add: float, activate: float, confidence: str, temperature: float, stop_at_eos: bool,
                 generator: torch.Generator | None) -> None:
        self.mask_id, self.eos = model.mask_token_id, model.eos_token_id
        self.P = prompt.numel()
        self.x = torch.cat([prompt, torch.full((max_new_tokens,), self.mask_id, dtype=torch.long)])  # (T,)
        self.blocks = grid_blocks(self.P, self.x.numel(), model.config.block_size)
        self.threshold, self.add, self.activate = threshold, add, activate
        self.measure, self.temperature, self.generator = get_measure(confidence), temperature, generator
        self.stop_at_eos = stop_at_eos and self.eos is not None
        self.left = [e - s for s, e in self.blocks]  # masked positions per block (counted, not recomputed)
        self.added = 1  # blocks in flight or done
        self.done = False

    def share(self, k: int) -> float:
        """Decoded share of block k."""
        s, e = self.blocks[k]
        return 1.0 - self.left[k] / (e - s)

    def ended(self, upto: int) -> bool:
        return self.stop_at_eos and bool((self.x[self.P:upto] == self.eos).any())

    def span(self) -> tuple[int, int] | None:
        """[first unfinished block's start, last block in flight's end): the next pass's columns; None when
        the row is done (its blocks never started are then EOS)."""
        while not self.done:
            first = next((k for k in range(self.added) if self.left[k]), None)
            if first is not None:
                return self.blocks[first][0], self.blocks[self.added - 1][1]
            if self.added == len(self.blocks) or self.ended(self.blocks[self.added - 1][1]):
                self.done = True
            else:
                self.added += 1  # the pipeline ran dry: start the next block
        if self.added < len(self.blocks) and self.eos is not None:  # the answer ended before these blocks
            self.x[self.blocks[self.added][0]:] = self.eos
        return None

    def apply(self, logits_at: Callable[[int, int], torch.Tensor]) -> None:
        """Commit from one pass; logits_at(s, e) gives the logits `# (e-s, V)` of columns [s, e) of `span()`."""
        s, e = self.span()
        first = next(k for k in range(self.added) if self.blocks[k][0] == s)
        # One proposal and one confidence for the whole span: every block in flight reads its slice.
        logits = logits_at(s, e)[None]  # (1, e-s, V)
        x0 = gumbel_argmax(logits, self.temperature, self.generator, forbid=self.mask_id)[0]  # (e-s,)
        scores = self.measure(logits, x0[None])[0]  # (e-s,)
        for k in range(first, self.added):
            if not self.left[k]:
                continue
            bs, be = self.blocks[k]
            masked = self.x[bs:be] == self.mask_id
            proposal = x0[bs - s:be - s]
            conf = scores[bs - s:be - s].masked_fill(~masked, float("-inf"))
            commit = masked & (conf >= self.threshold)
            if (k == first or self.share(k - 1) > self.activate) and not commit.any():
                commit[conf.argmax()] = True
            self.x[bs:be][commit] = proposal[commit]
            self.left[k] -= int(commit.sum())
        if self.added < len(self.blocks) and self.share(self.added - 1) > self.add and not self.ended(e):
            self.added += 1


@torch.no_grad()
def pipeline_row(model: torch.nn.Module, prompt: torch.Tensor, max_new_tokens: int, **rule: object
                 ) -> tuple[list[int], int]:
    """Decode one row `# (P,)`; returns (the generated span of N tokens, forward passes)."""
    row = PipelineRow(model, prompt, max_new_tokens, **rule)
    cache = ExactBlockCache()  # the exact cache block decoding uses: one window over every block in flight
    cache.start(model, row.x[None], torch.arange(row.x.numel())[None], None, shift=False)
    nfe = 0
    while (span := row.span()) is not None:
        window = cache.step(row.x[None], span, 0)
        nfe += 1
        row.apply(lambda s, e: window.at(s, e)[0])
    return row.x[row.P:].tolist(), nfe


@torch.no_grad()
def pipeline(model: torch.nn.Module, prompt_ids: torch.Tensor, *, max_new_tokens: int,
             threshold: float = D2F_DEFAULTS["threshold"], add: float = D2F_DEFAULTS["add"],
             activate: float = D2F_DEFAULTS["activate"], confidence: str = D2F_DEFAULTS["confidence"],
             temperature: float = 0.0, stop_at_eos: bool = True, prompt_mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> GenerationResult:
    """D2F defaults: tau_conf 0.9, tau_add 0.1, tau_act 0.95. nfe sums every row's passes."""
    check_d2f(model, threshold, add, activate)
    return decode_each_row(model, prompt_ids, prompt_mask, stop_at_eos, lambda prompt: pipeline_row(
        model, prompt, max_new_tokens, threshold=threshold, add=add, activate=activate, confidence=confidence,
        temperature=temperature, stop_at_eos=stop_at_eos, generator=generator))
