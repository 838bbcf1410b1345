"""LLaDA's low-confidence remasking: commit the k most confident proposals per step, k from the linear schedule."""
from __future__ import annotations

import torch

from unmask.decode.schedule import transfer_counts
from unmask.decode.strategies.base import Strategy, top_k_per_row


class LowConfidence(Strategy):
    name = "low_confidence"

    def begin_block(self, masked: torch.Tensor, steps: int) -> None:
        counts = transfer_counts(masked, steps)  # (B, steps)
        # A step that commits nothing in any row changes nothing: skip its forward pass.
        self.counts = counts[:, counts.sum(dim=0) > 0]

    def select(self, step: int, confidence: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        return top_k_per_row(confidence, self.counts[:, step])
