"""LLaDA's random remasking: the schedule of low_confidence, positions chosen uniformly at random."""
from __future__ import annotations

import torch

from unmask.decode.strategies.low_confidence import LowConfidence


class RandomRemask(LowConfidence):
    name = "random"

    def __init__(self) -> None:  # the score is a coin, not a confidence measure
        super().__init__()

    def confidence(self, logits: torch.Tensor, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.rand(x0.shape, dtype=torch.float64, generator=generator, device=x0.device)
