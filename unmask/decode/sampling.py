"""Token choice from logits: LLaDA's float64 Gumbel-max for diffusion, sampling for AR; top-k / top-p for both."""
from __future__ import annotations

import torch


def gumbel_argmax(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None,
                  forbid: int | None = None, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """argmax of exp(logits) / (-log u)^temperature in float64 (LLaDA's sampler); plain argmax at 0.

    It samples softmax(logits / temperature); `top_k` / `top_p` restrict that distribution first, as they
    do for AR sampling. forbid: a token id never proposed (the mask id: committing a mask would undo the step).
    """
    if forbid is not None:
        logits = logits.clone()
        logits[..., forbid] = float("-inf")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.to(torch.float64)
    if top_k is not None or top_p is not None:
        kept = torch.isfinite(filter_logits(logits / temperature, top_k, top_p))
        logits = logits.masked_fill(~kept, float("-inf"))
    noise = torch.rand(logits.shape, dtype=torch.float64, generator=generator, device=logits.device)
    return (logits.exp() / (-torch.log(noise)) ** temperature).argmax(dim=-1)


def token_probability(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """p(token) under softmax(logits) in float64 `# (B, L)`."""
    p = torch.softmax(logits.to(torch.float64), dim=-1)
    return p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def sample_next(logits: torch.Tensor, *, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from `# (B, V)` logits: greedy at temperature 0, else filtered sampling."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """`# (..., V)` logits with everything outside the k likeliest / the smallest set of mass top_p at -inf."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        p = torch.softmax(sorted_logits, dim=-1)
        drop = p.cumsum(dim=-1) - p >= top_p  # keep the smallest prefix reaching top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits
