"""Fast-dLLM threshold decoding: commit every masked position whose confidence reaches tau.

Each row commits its own number of tokens per step; a row whose proposals all fall short commits
its single most confident one, so every step makes progress. tau > 1 is one token per step.
"""
from __future__ import annotations

import torch

from unmask.decode.strategies.base import Strategy, at_least_one


class Threshold(Strategy):
    name = "threshold"

    def __init__(self, threshold: float = 0.9, confidence: str = "prob") -> None:
        super().__init__(confidence)
        if threshold <= 0:
            raise ValueError(f"threshold must be above 0, not {threshold}")
        self.threshold = threshold

    def select(self, step: int, confidence: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        return at_least_one((confidence >= self.threshold) & masked, confidence, masked)
