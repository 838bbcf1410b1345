"""A padded training batch and the function that builds one from token lists."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class Batch:
    ids: torch.Tensor  # (B, L) token ids, right-padded
    valid: torch.Tensor  # (B, L) False on padding
    target: torch.Tensor  # (B, L) True where a token is scored (and, for diffusion, may be masked)

    @property
    def n_tokens(self) -> int:
        return int(self.valid.sum())


def make_batch(sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int], pad_id: int) -> Batch:
    """Right-pad token lists into one batch; positions before prompt_len are never targets."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    valid = torch.zeros(len(sequences), length, dtype=torch.bool)
    target = torch.zeros(len(sequences), length, dtype=torch.bool)
    for row, (seq, p) in enumerate(zip(sequences, prompt_lens)):
        ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        valid[row, :len(seq)] = True
        target[row, p:len(seq)] = True
    return Batch(ids, valid, target)
