"""The contract between a block-decoding row and its step rule."""
from __future__ import annotations

import torch

from unmask.decode.confidence import get_measure


class Strategy:
    """Decides, at each denoising step of a block, which masked positions to commit.

    The row proposes a token x0 for every position of the block; the strategy scores them
    (`confidence`) and picks which to commit (`select`). It never touches a model. One instance
    per row: `begin_block` may keep per-block state.
    """

    name = "base"
    uses_verifier = False  # True: a small AR model vets each step's commits (`review`) before they stand

    def __init__(self, confidence: str = "prob") -> None:
        self.measure = get_measure(confidence)

    def begin_block(self, masked: torch.Tensor, steps: int) -> None:
        """masked `# (B, Lb)`: the block's masked positions before its first step; steps: its step budget."""

    def confidence(self, logits: torch.Tensor, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Score of each proposal `# (B, Lb)` by the chosen measure (default: its probability, as LLaDA)."""
        return self.measure(logits, x0)

    def select(self, step: int, confidence: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Positions to commit `# (B, Lb)` bool; confidence is -inf where not masked."""
        raise NotImplementedError


def top_k_per_row(confidence: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Bool mask of each row's k[row] highest-confidence positions `# (B, Lb)`."""
    k_max = int(k.max()) if k.numel() else 0
    chosen = torch.zeros_like(confidence, dtype=torch.bool)
    if k_max == 0:
        return chosen
    idx = torch.topk(confidence, k_max, dim=-1).indices  # (B, k_max)
    keep = torch.arange(k_max, device=k.device)[None, :] < k[:, None]
    return chosen.scatter(-1, idx, keep)


def at_least_one(chosen: torch.Tensor, confidence: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """`chosen`, plus each row's most confident masked position where a row with masks chose none."""
    starved = masked.any(dim=-1) & ~chosen.any(dim=-1)  # (B,)
    return chosen | top_k_per_row(confidence, starved.long())
