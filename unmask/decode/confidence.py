"""How sure the model is of a proposal: the scores step rules rank and threshold.

Every measure is higher-is-surer and lies in [0, 1], so one threshold scale fits all:
prob     p(x0), the proposal's softmax probability (LLaDA, Fast-dLLM);
margin   p(top1) - p(top2), the gap to the runner-up;
entropy  exp(-H(p)), one over the effective number of choices (1 for a one-hot, 1/2 for a coin flip).
Computed in float64, as LLaDA does, so ties resolve the same way as the reference.
"""
from __future__ import annotations

from typing import Callable

import torch

from unmask.decode.sampling import token_probability

Measure = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def probability(logits: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    return token_probability(logits, x0)  # (B, L)


def margin(logits: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    top2 = torch.softmax(logits.to(torch.float64), dim=-1).topk(2, dim=-1).values  # (B, L, 2)
    return top2[..., 0] - top2[..., 1]


def entropy(logits: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.to(torch.float64), dim=-1)  # (B, L, V)
    return torch.exp((logp.exp() * logp).sum(dim=-1))


MEASURES: dict[str, Measure] = {"prob": probability, "margin": margin, "entropy": entropy}


def get_measure(name: str) -> Measure:
    if name not in MEASURES:
        raise ValueError(f"unknown confidence measure {name!r}; known measures: {', '.join(MEASURES)}")
    return MEASURES[name]
