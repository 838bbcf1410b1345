"""The continuous (flow) model's noise: a variance-preserving Gaussian path indexed by the log noise-to-signal
ratio g, and a learnable Gumbel schedule that says which g to train and sample at.

z = alpha(g) e + sigma(g) eps with alpha^2 = sigmoid(-g), sigma^2 = sigmoid(g): g -> -inf is the clean
embedding, g -> +inf pure noise; alpha^2 + sigma^2 = 1, so z keeps unit variance per dimension (the
embeddings have norm sqrt(d)). Everything that is a property of the path (the likelihood bound, the ODE)
is written in g; the schedule only chooses where along it the work goes.

How the schedule is learnt (CDCD's time warping, with LangFlow's Gumbel family): t ~ U(0, 1) maps to
g = mu - beta log(-log t), the inverse CDF of a Gumbel(mu, beta), clamped to [g_min, g_max]. A Gumbel CDF
F(g) rises from 0 (clean) to 1 (noise) as the x-prediction's cross-entropy does, from ~0 nats (the token
is legible) to the entropy of a token given its context. Training regresses scale * F(g) onto the
detached per-sequence cross-entropy at the sampled g (`fit_loss`), so F becomes the normalised loss
curve; sampling g through F^-1 then spends equal probability on equal increments of loss: training and
sampling steps concentrate where the model's uncertainty changes, not where the token is already
certain or hopeless. The fit touches only (mu, beta, scale): the cross-entropy is detached and the
model's own loss does not reach the schedule, whose g enters the network detached.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

TINY = 1e-6  # keeps t off 0 and 1, where the inverse CDF is infinite


def alpha_sigma(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Signal and noise scales at log noise-to-signal ratio g: alpha^2 = sigmoid(-g), sigma^2 = sigmoid(g)."""
    return torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()


class GumbelSchedule(nn.Module):
    """g(t) = clamp(mu - beta log(-log t), g_min, g_max), with mu, beta (and the fit's scale) learnt."""

    def __init__(self, g_min: float, g_max: float, scale: float = 1.0) -> None:
        super().__init__()
        if not g_min < g_max:
            raise ValueError(f"the noise range needs g_min < g_max, not {g_min} and {g_max}")
        self.g_min, self.g_max = g_min, g_max
        self.mu = nn.Parameter(torch.tensor(0.0))
        self.log_beta = nn.Parameter(torch.tensor(math.log((g_max - g_min) / 8)))  # covers the range at first
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    @property
    def beta(self) -> torch.Tensor:
        return self.log_beta.exp()

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """g at t in [0, 1] (0: g_min, clean; 1: g_max, noise), same shape as t."""
        t = t.clamp(TINY, 1 - TINY)
        g = self.mu - self.beta * torch.log(-torch.log(t))
        return g.clamp(self.g_min, self.g_max)

    def cdf(self, g: torch.Tensor) -> torch.Tensor:
        """The Gumbel CDF: the share of the loss curve below g."""
        return torch.exp(-torch.exp(-(g - self.mu) / self.beta))

    def fit_loss(self, g: torch.Tensor, ce: torch.Tensor) -> torch.Tensor:
        """Squared error of scale * F(g) against the cross-entropy `ce` measured at noise g (both `# (B,)`)."""
        return F.mse_loss(self.log_scale.exp() * self.cdf(g.detach()), ce.detach())
