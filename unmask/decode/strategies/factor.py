"""Fast-dLLM factor decoding: with confidences sorted c_1 >= c_2 >= ..., commit the top n for the
largest n with (n + 1)(1 - c_n) < f. More tokens when the model is sure of many, fewer when not."""
from __future__ import annotations

import torch

from unmask.decode.strategies.base import Strategy, at_least_one, top_k_per_row


class Factor(Strategy):
    name = "factor"

    def __init__(self, factor: float = 1.0, confidence: str = "prob") -> None:
        super().__init__(confidence)
        if factor <= 0:
            raise ValueError(f"factor must be above 0, not {factor}")
        self.factor = factor

    def select(self, step: int, confidence: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        c = confidence.sort(dim=-1, descending=True).values  # (B, Lb); -inf (unmasked) sort last
        n = torch.arange(1, c.shape[-1] + 1, device=c.device, dtype=c.dtype)
        # (n+1)(1-c_n) grows with n, so the n that pass form a prefix: count them.
        ok = ((n + 1) * (1 - c) < self.factor) & torch.isfinite(c)
        return at_least_one(top_k_per_row(confidence, ok.sum(dim=-1)), confidence, masked)
