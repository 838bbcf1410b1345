"""The contract between the denoising loop and a step rule."""
from __future__ import annotations

import torch

from unmask.decode.confidence import get_measure


class Strategy:
    """Decides, at each denoising step of a block, which masked positions to commit.

    The loop proposes a token x0 for every position of the block; the strategy scores them
    (`confidence`) and picks which to commit (`select`). It never touches the model.
    """

    name = "base"

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

    def check_model(self, model: torch.nn.Module) -> None:
        """Refuse (ValueError) a model this rule cannot decode; called once per generation."""

    def review(self, x: torch.Tensor, valid: torch.Tensor | None, positions: torch.Tensor, span: tuple[int, int],
               x0: torch.Tensor, confidence: torch.Tensor, commit: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """A second look at `commit` and the proposals x0 `# (B, Lb)` with the whole sequence x `# (B, T)`
        in view; returns the (commit, x0) to apply. Default: keep all."""
        return commit, x0


def top_k_per_row(confidence: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Bool mask of each row's k[row] highest-confidence positions `# (B, Lb)`."""
    k_max = int(k.max()) if k.numel() else 0
    chosen = torch.zeros_like(confidence, dtype=torch.bool)
    if k_max == 0:
        return chosen
    idx = torch.topk(confidence, k_max, dim=-1).indices  # (B, k_max)
    keep = torch.arange(k_max)[None, :] < k[:, None]
    return chosen.scatter(-1, idx, keep)


def at_least_one(chosen: torch.Tensor, confidence: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """`chosen`, plus each row's most confident masked position where a row with masks chose none."""
    starved = masked.any(dim=-1) & ~chosen.any(dim=-1)  # (B,)
    return chosen | top_k_per_row(confidence, starved.long())
