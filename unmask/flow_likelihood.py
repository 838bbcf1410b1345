"""The continuous model's likelihood: an upper bound on -log p(x) through the probability-flow ODE.

The model is a density over embeddings pushed to tokens: z_max ~ N(0, I) at g_max, carried down to g_min
by the probability-flow ODE of the Gaussian path, then decoded token by token by p(x | z_min) (the
x-prediction at g_min). For data x, with z0 ~ q(z0 | x) = N(alpha0 e_x, sigma0^2 I) at g_min:

  -log p(x) <= E_q[ -log p(x | z0)            reconstruction
                    - log N(z1; 0, I)         Gaussian prior, z1 = the ODE's image of z0 at g_max
                    - int div v(z_g, g) dg    the change of volume along the ODE (instantaneous change
                                              of variables, Chen et al. 2018)
                    + log q(z0 | x) ]         the noise's own density (variational dequantisation)

The ODE in g (the log noise-to-signal ratio), with alpha^2 = sigmoid(-g) and alpha^2 + sigma^2 = 1:
dz/dg = alpha' x_hat + sigma' eps_hat = (alpha^2 z - alpha x_hat(z, g)) / 2, x_hat the expected clean
embedding. Its divergence is (alpha^2 D - alpha tr(d x_hat / d z)) / 2 over the D noisy coordinates; the
trace is Hutchinson's estimate eps^T (d x_hat / d z) eps with one Rademacher probe per sequence held for
the whole solve (FFJORD), or, with `exact=True`, the full Jacobian's trace (D vector-Jacobian products:
for tiny models and tests). Clean positions (a prompt) are constants of the ODE and score nothing.

The first part of the divergence integrates in closed form (D/2 (log sigmoid(g_max) - log sigmoid(g_min))),
so the solver only carries the trace; z and that integral go through torchdiffeq (RK4 in even steps of g
by default, or any of its methods). Seeded: one draw of z0
and the probes per call, so a figure is reproducible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from unmask.models.flow import FlowInputs
from unmask.models.noise_schedule import alpha_sigma

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z (B, L, d), g (B,)) -> logits (B, L, V)
EXACT_LIMIT = 4096  # noisy coordinates per sequence the exact trace will loop over
# Fixed-step methods step evenly in g. Not in the signal share alpha^2: at low noise the noise part of z grows
# as sigma ~ exp(g / 2), and a step of several units of g there (what even steps in alpha^2 give) threw the
# bound off by tens of nats per character on shakespeare-flow, where even steps in g converge (README).
FIXED_STEP = ("rk4", "euler", "midpoint", "heun3")


@dataclass
class FlowBound:
    """Per sequence `# (B,)` in nats: the bound and its terms (bound = reconstruction + prior - volume + noise)."""

    bound: torch.Tensor
    reconstruction: torch.Tensor
    prior: torch.Tensor
    volume: torch.Tensor
    noise: torch.Tensor
    tokens: torch.Tensor  # noisy (scored) tokens per sequence


def denoiser(model: torch.nn.Module, ids: torch.Tensor, noisy: torch.Tensor, self_condition: bool = True) -> Denoiser:
    """The model as a function of (z, g): logits at the `noisy` positions' noise level g (one per sequence),
    the rest clean. With self_condition, a second pass reads the first's estimate, as sampling does; both
    passes are a function of z alone, so the ODE stays an ODE."""

    def run(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        level = torch.where(noisy, g[:, None].to(z.dtype), torch.tensor(-math.inf, dtype=z.dtype, device=z.device))
        logits = model(ids, flow=FlowInputs(z, level))
        if self_condition:
            logits = model(ids, flow=FlowInputs(z, level, model.expected_embedding(logits)))
        return logits

    return run


def row_draws(seed: int | Sequence[int], B: int, L: int, d: int, probes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The bound's randomness: z0's noise `# (B, L, d)` and the probes' signs in {0, 1} `# (probes, B, L, d)`.
    One seed draws the whole batch (noise first, then probes); one seed per row draws each row from its own
    generator, so a row's bound does not depend on the rows beside it (`unmask eval` seeds by window)."""
    if isinstance(seed, int):
        gen = torch.Generator(device="cpu").manual_seed(seed)
        eps = torch.randn(B, L, d, generator=gen)
        return eps, torch.randint(0, 2, (probes, B, L, d), generator=gen)
    if len(seed) != B:
        raise ValueError(f"one seed per row: {len(seed)} seeds for {B} rows")
    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seed]
    eps = torch.stack([torch.randn(L, d, generator=g) for g in gens])
    return eps, torch.stack([torch.randint(0, 2, (probes, L, d), generator=g) for g in gens], dim=1)


def ode_bound(model: torch.nn.Module, ids: torch.Tensor, noisy: torch.Tensor, *, denoise: Denoiser | None = None,
              exact: bool = False, probes: int = 1, steps: int = 64, method: str = "rk4", seed: int | Sequence[int] = 0,
              self_condition: bool = True) -> FlowBound:
    """The bound for each row of `ids` `# (B, L)`, scoring the `noisy` positions `# (B, L)` given the rest.

    model: a continuous model (`embeddings()`, `expected_embedding()`, config g_min / g_max); `denoise`
    replaces its forward (tests pass the exact posterior). probes: Hutchinson probes averaged per sequence
    (each one more vector-Jacobian product per evaluation). steps: RK4 steps from g_min to g_max (fixed-step
    methods), or ignored by adaptive ones (rtol = atol = 1e-5). seed: one for the batch, or one per row
    (`row_draws`)."""
    from torchdiffeq import odeint

    cfg = model.config
    run = denoise or denoiser(model, ids, noisy, self_condition)
    table = model.embeddings().detach()
    B, L = ids.shape
    d = table.shape[1]
    keep = noisy[..., None].to(table.dtype)  # (B, L, 1): the ODE moves only noisy coordinates
    dims = noisy.sum(1).to(torch.float64) * d  # (B,) D per sequence
    if exact and int(dims.max()) > EXACT_LIMIT:
        raise ValueError(f"the exact divergence loops over every noisy coordinate: {int(dims.max())} here, more than "
                         f"{EXACT_LIMIT}; use the Hutchinson estimate (drop exact) or score a shorter span")
    g0, g1 = torch.tensor(cfg.g_min, dtype=table.dtype), torch.tensor(cfg.g_max, dtype=table.dtype)
    a0, s0 = alpha_sigma(g0)
    eps, signs = row_draws(seed, B, L, d, probes)
    eps = eps.to(table) * keep
    z0 = a0 * table[ids] + s0 * eps
    probe = (signs.to(table) * 2 - 1) * keep

    def trace(z: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_hat `# (B, L, d)`, tr(d x_hat / d z) over the noisy coordinates `# (B,)`)."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            x_hat = model.expected_embedding(run(z, g.expand(B))) * keep
            if not exact:
                total = torch.zeros(B, dtype=torch.float64)
                for i, p in enumerate(probe):
                    (vjp,) = torch.autograd.grad(x_hat, z, p, retain_graph=i + 1 < probes)
                    total += (vjp * p).sum(dim=(1, 2)).to(torch.float64)
                return x_hat.detach(), total / probes
            total = torch.zeros(B, dtype=torch.float64)
            scored = [pos for pos in range(L) if bool(noisy[:, pos].any())]  # clean columns: nothing to trace
            for pos, k in ((pos, k) for pos in scored for k in range(d)):
                unit = torch.zeros_like(z)
                unit[:, pos, k] = 1.0
                (col,) = torch.autograd.grad(x_hat, z, unit, retain_graph=True)
                total += (col[:, pos, k] * noisy[:, pos]).to(torch.float64)
            return x_hat.detach(), total

    def dynamics(g: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        z, _ = state
        alpha, _ = alpha_sigma(g)
        x_hat, tr = trace(z, g)
        dz = 0.5 * (alpha ** 2 * z - alpha * x_hat) * keep
        return dz, -0.5 * alpha.to(torch.float64) * tr  # the trace part; D alpha^2 / 2 is added exactly below

    fixed = method in FIXED_STEP
    grid = torch.linspace(cfg.g_min, cfg.g_max, steps + 1, dtype=table.dtype) if fixed else torch.stack([g0, g1])
    tol = {} if fixed else {"rtol": 1e-5, "atol": 1e-5}
    zs, volumes = odeint(dynamics, (z0, torch.zeros(B, dtype=torch.float64)), grid, method=method, **tol)
    z1 = zs[-1]
    # The divergence's first part, D alpha^2 / 2, integrates exactly: int sigmoid(-g) dg = log sigmoid(g).
    log_sig = torch.nn.functional.logsigmoid(torch.tensor([cfg.g_min, cfg.g_max], dtype=torch.float64))
    volume = volumes[-1] + 0.5 * dims * float(log_sig[1] - log_sig[0])
    with torch.no_grad():
        logits = run(z0, g0.expand(B))
        lp = torch.log_softmax(logits.double(), dim=-1).gather(-1, ids[..., None]).squeeze(-1)  # (B, L)
        reconstruction = -(lp * noisy).sum(1)
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    prior = (0.5 * z1.double().pow(2) * keep).sum(dim=(1, 2)) + half_log_2pi * dims  # -log N(z1; 0, I)
    noise = -(0.5 * eps.double().pow(2)).sum(dim=(1, 2)) - dims * (half_log_2pi + math.log(float(s0)))  # log q(z0|x)
    bound = reconstruction + prior - volume + noise
    return FlowBound(bound, reconstruction, prior, volume, noise, noisy.sum(1))
