"""What every decoder returns."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class GenerationResult:
    token_ids: torch.Tensor  # (B, N) generated tokens; with stop_at_eos, cut before EOS and right-padded
    lengths: list[int]  # tokens returned per row
    finished: list[bool]  # row ended with EOS (the EOS itself is not returned)
    nfe: int  # model forward passes
    seconds: float
    steps_per_block: list[int] = field(default_factory=list)
    rows_share_forwards: bool = True  # False when each row ran its own passes (nfe then sums over rows)
    # Forward passes each row needed: what it costs decoded alone (batched rows decode as they do alone),
    # where `row_forwards` also charges a finished row for the passes its batch still ran.
    solo_nfe: list[int] = field(default_factory=list)

    @property
    def row_forwards(self) -> int:
        """Forward passes charged to rows: every row pays for each batched pass it was part of."""
        return self.nfe * len(self.lengths) if self.rows_share_forwards else self.nfe

    @property
    def sequences(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.token_ids, self.lengths)]

    @property
    def n_tokens(self) -> int:
        """Useful tokens produced: the returned ones plus each row's EOS."""
        return sum(self.lengths) + sum(self.finished)


def cut_at_eos(generated: torch.Tensor, eos_id: int | None, pad_id: int, stop_at_eos: bool
               ) -> tuple[torch.Tensor, list[int], list[bool]]:
    """Drop everything from each row's first EOS on (when stop_at_eos); pad rows to the longest."""
    B, N = generated.shape
    if not stop_at_eos or eos_id is None:
        return generated, [N] * B, [False] * B
    is_eos = generated == eos_id
    has = is_eos.any(dim=1)
    first = torch.where(has, is_eos.int().argmax(dim=1), torch.full((B,), N))
    lengths = first.tolist()
    width = max(lengths, default=0)
    out = generated[:, :width].clone()
    out[torch.arange(width)[None, :] >= first[:, None]] = pad_id
    return out, lengths, has.tolist()


def decode_each_row(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor | None,
                    stop_at_eos: bool, decode_row: Callable[[torch.Tensor], tuple[list[int], int]]
                    ) -> GenerationResult:
    """Run `decode_row(prompt `# (P,)`) -> (tokens, forward passes)` on each row alone (rows whose
    passes cannot be shared: they accept drafts or follow block grids of their own); nfe sums them."""
    t0 = time.perf_counter()
    rows, solo = [], []
    for b in range(prompt_ids.shape[0]):
        prompt = prompt_ids[b][prompt_mask[b]] if prompt_mask is not None else prompt_ids[b]
        toks, n = decode_row(prompt)
        rows.append(toks)
        solo.append(n)
    width = max(len(r) for r in rows)
    fill = model.eos_token_id if model.eos_token_id is not None else model.pad_token_id
    generated = torch.tensor([r + [fill] * (width - len(r)) for r in rows], dtype=torch.long)  # (B, width)
    tokens, lengths, finished = cut_at_eos(generated, model.eos_token_id, model.pad_token_id, stop_at_eos)
    return GenerationResult(tokens, lengths, finished, sum(solo), time.perf_counter() - t0, rows_share_forwards=False,
                            solo_nfe=solo)
