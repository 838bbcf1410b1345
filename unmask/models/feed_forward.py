"""The Transformer's feed-forward layers: one SwiGLU, or a mixture of SwiGLU experts (LLaDA2's MoE layers)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from unmask.config import MoEConfig


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MoEFeedForward(nn.Module):
    """Routed experts plus shared ones (BailingMoeV2 / DeepSeek-V3 routing, 'noaux_tc').

    Each token's router scores are sigmoid(W x); the choice adds a learned per-expert bias (the bias
    balances load during training and only steers the choice: the weights are the unbiased scores).
    Groups are ranked by the sum of their two best biased scores and only the `topk_groups` best stay
    eligible; among those the `per_token` best experts run, weighted by their scores (normalised to sum 1
    if `normalize`) times `routed_scaling`. The shared experts, one SwiGLU `n_shared` experts wide, see
    every token."""

    def __init__(self, dim: int, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.router = nn.Linear(dim, cfg.n_experts, bias=False)
        self.expert_bias = nn.Parameter(torch.zeros(cfg.n_experts), requires_grad=False)
        self.experts = nn.ModuleList(FeedForward(dim, cfg.expert_hidden) for _ in range(cfg.n_experts))
        self.shared = FeedForward(dim, cfg.expert_hidden * cfg.n_shared) if cfg.n_shared else None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For tokens `x` `# (N, D)`: the chosen experts `# (N, k)` and their weights `# (N, k)`, in float32."""
        cfg = self.cfg
        scores = torch.sigmoid(F.linear(x.float(), self.router.weight.float()))  # (N, E)
        choice = scores + self.expert_bias.float()
        N = x.shape[0]
        if cfg.n_groups > 1:
            grouped = choice.view(N, cfg.n_groups, -1)  # (N, G, E/G)
            best = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(-1)  # (N, G)
            keep = torch.zeros_like(best, dtype=torch.bool).scatter_(1, best.topk(cfg.topk_groups, dim=-1).indices,
                                                                      True)
            choice = choice.masked_fill(~keep[:, :, None].expand_as(grouped).reshape(N, -1), float("-inf"))
        experts = choice.topk(cfg.per_token, dim=-1).indices  # (N, k)
        weights = scores.gather(1, experts)
        if cfg.normalize and cfg.per_token > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return experts, weights * cfg.routed_scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, D)
        experts, weights = self.route(flat)
        out = torch.zeros(flat.shape, dtype=torch.float32, device=x.device)
        for e in experts.unique().tolist():  # only the experts some token chose run
            token, slot = (experts == e).nonzero(as_tuple=True)
            y = self.experts[e](flat[token]).float() * weights[token, slot, None]
            out.index_add_(0, token, y)
        out = out.to(x.dtype)
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.view(shape)
