"""What every decoder returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class GenerationResult:
    token_ids: torch.Tensor  # (B, N) generated tokens; with stop_at_eos, cut before EOS and right-padded
    lengths: list[int]  # tokens returned per row
    finished: list[bool]  # row ended with EOS (the EOS itself is not returned)
    nfe: int  # forward passes of the model (a pass serves every row with work in it)
    seconds: float
    steps_per_block: list[int] = field(default_factory=list)  # denoising steps per block, the most any row took
    # Forward passes each row took part in: what it costs decoded alone (rows decode in a batch as they do alone).
    solo_nfe: list[int] = field(default_factory=list)

    @property
    def row_forwards(self) -> int:
        """Forward passes charged to rows: each row pays for every pass it took part in."""
        return sum(self.solo_nfe)

    @property
    def sequences(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.token_ids, self.lengths)]

    @property
    def n_tokens(self) -> int:
        """Useful tokens produced: the returned ones plus each row's EOS."""
        return sum(self.lengths) + sum(self.finished)
