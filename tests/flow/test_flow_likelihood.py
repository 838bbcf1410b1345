"""The ODE bound against a case whose NLL is known: two positions, three tokens, a fixed distribution, and
the exact posterior as the denoiser (so the ODE is the true probability flow)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from unmask.flow_likelihood import ode_bound
from unmask.models.noise_schedule import alpha_sigma

V, D = 3, 4
PROBS = torch.tensor([[0.30, 0.05, 0.05], [0.02, 0.25, 0.03], [0.10, 0.05, 0.15]], dtype=torch.float64)


class ExactPosterior(torch.nn.Module):
    """p(x_i | z) for data drawn from PROBS over (x_1, x_2), z_i = alpha e_{x_i} + sigma eps: the Bayes denoiser."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        table = torch.randn(V, D, generator=gen, dtype=torch.float64)
        self.table = table * (math.sqrt(D) / table.norm(dim=1, keepdim=True))
        self.config = SimpleNamespace(g_min=-10.0, g_max=10.0)

    def embeddings(self) -> torch.Tensor:
        return self.table

    def expected_embedding(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1) @ self.table

    def forward(self, ids: torch.Tensor, flow) -> torch.Tensor:  # both positions noisy at one level per row
        z, g = flow.z.double(), flow.g[:, 0].double()
        alpha, sigma = alpha_sigma(g)
        # log N(z_i; alpha e_v, sigma^2): (B, 2, V)
        ll = -((z[:, :, None, :] - alpha[:, None, None, None] * self.table) ** 2).sum(-1) / (2 * sigma[:, None, None] ** 2)
        joint = PROBS.log()[None] + ll[:, 0, :, None] + ll[:, 1, None, :]  # (B, V, V)
        first = torch.logsumexp(joint, dim=2)
        second = torch.logsumexp(joint, dim=1)
        return torch.stack([first, second], dim=1) - torch.logsumexp(joint.flatten(1), dim=1)[:, None, None]


def bounds(exact: bool, seeds: range, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    model = ExactPosterior()
    pairs = torch.tensor([[a, b] for a in range(V) for b in range(V)])  # every sequence, one row each
    noisy = torch.ones_like(pairs, dtype=torch.bool)
    runs = [ode_bound(model, pairs, noisy, denoise=lambda z, g: model(pairs, SimpleNamespace(z=z, g=g[:, None].expand(-1, 2))),
                      exact=exact, seed=s, **kw).bound for s in seeds]
    truth = -PROBS.flatten().log()
    return torch.stack(runs).mean(0), truth


def test_the_exact_bound_lies_just_above_the_true_nll() -> None:
    bound, truth = bounds(True, range(8), steps=64)
    expected = float((PROBS.flatten() * truth).sum())  # the data's entropy, what the bound's mean estimates
    mean_bound = float((PROBS.flatten() * bound).sum())
    assert mean_bound >= expected - 0.02  # a bound (up to the Monte Carlo noise of 8 draws)
    assert mean_bound <= expected + 0.05  # and a tight one with the exact denoiser
    assert torch.allclose(bound, truth, atol=0.15)  # sequence by sequence too


def test_hutchinson_agrees_with_the_exact_divergence_in_expectation() -> None:
    exact, _ = bounds(True, range(3), steps=8)
    hutchinson, _ = bounds(False, range(3), steps=8, probes=1000)  # the same z0 draws (seeds), 1000 probes each
    one_probe, _ = bounds(False, range(3), steps=8)
    assert torch.allclose(hutchinson, exact, atol=0.06)  # 200 probes were off by up to 0.11, 800 by 0.03
    assert not torch.allclose(one_probe, exact, atol=1e-3)  # one probe is noisy: the check can tell


def test_the_exact_divergence_refuses_long_spans() -> None:
    model = ExactPosterior()
    ids = torch.zeros(1, 2000, dtype=torch.long)
    with pytest.raises(ValueError, match="exact divergence"):
        ode_bound(model, ids, torch.ones_like(ids, dtype=torch.bool), denoise=lambda z, g: None, exact=True)


def test_a_narrow_diffusion_space_is_bounded_in_its_own_width(narrow_flow_model) -> None:
    """embed_dim 8: the bound runs over 8 coordinates per noisy token, not the network's 32."""
    ids = torch.tensor([[10, 11, 12, 13, 14]])
    noisy = torch.tensor([[False, False, True, True, True]])
    with torch.no_grad():
        result = ode_bound(narrow_flow_model, ids, noisy, exact=True, steps=8)
    assert torch.isfinite(result.bound).all() and int(result.tokens) == 3
    long = torch.full((1, 600), 10)
    with pytest.raises(ValueError, match="4800"):  # 600 tokens x 8 dims
        ode_bound(narrow_flow_model, long, torch.ones_like(long, dtype=torch.bool), exact=True)
