"""The continuous model's training loss: cross-entropy of the x-prediction at sampled noise levels.

Why cross-entropy is the flow-matching loss here (LangFlow's Bregman view): on the Gaussian path
z_g = alpha e + sigma eps the probability-flow velocity is linear in the denoiser's output,
dz/dg = (alpha^2 z - alpha x_hat(z, g)) / 2 with x_hat = E[e | z] (unmask/flow_likelihood.py), so learning
the flow is learning the posterior mean of the clean embedding. Flow matching's squared error is one
Bregman divergence whose minimiser is that posterior mean; every Bregman divergence has the same
minimiser (Banerjee et al., 2005). With x_hat = softmax(logits) E, the cross-entropy between the one-hot
token and softmax(logits) is the Bregman divergence of the negative entropy on the simplex: its minimiser
is the true posterior over tokens, whose expected embedding is the posterior mean. So minimising the
cross-entropy trains the same velocity field as flow matching, with the gradients of a classifier.

Noise levels: t ~ U(0, 1) per sequence (low-discrepancy across the batch, as the MDM loss draws), g from
the learnt Gumbel schedule (unmask/models/noise_schedule.py), whose fit to the measured cross-entropy is
added here. The schedule follows the loss curve, so it puts almost nothing below the curve's rise (a
Gumbel's left tail is doubly exponential: shakespeare-flow's schedule draws g < -1.5 less than once in
50,000), while the bound integrates the ODE down to g_min, where the signal-to-noise weight exp(-g) is
largest. `uniform_share` of the rows instead draw g uniformly over [g_min, g_max], the schedule fitted on
the others alone so that it still learns the loss curve (0 by default: a fifth did worse on validation,
README "Continuous diffusion"). Prompt positions (batch.target False) stay clean, and for text, where
every position is a target, a random clean prefix (`prefix_share` of the sequences, half by default, up
to half their length) teaches the model prompts.
Self-conditioning (Chen et al., 2022): half the sequences first run with no estimate, and the second pass
sees that pass's expected embedding (detached); the others see none, so the model works both ways.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from unmask.config import TrainConfig
from unmask.data.batch import Batch
from unmask.models.flow import FlowInputs, FlowTransformer
from unmask.models.noise_schedule import alpha_sigma
from unmask.train.objectives import low_discrepancy_uniform

SELF_COND_SHARE = 0.5


def noised(model: FlowTransformer, ids: torch.Tensor, noisy: torch.Tensor, g: torch.Tensor,
           generator: torch.Generator | None = None) -> FlowInputs:
    """FlowInputs with `noisy` positions `# (B, L)` at per-sequence noise `g` `# (B,)`, the rest clean."""
    e = model.embeddings()[ids]  # (B, L, d)
    eps = torch.randn(e.shape, generator=generator).to(e)
    alpha, sigma = alpha_sigma(g.to(e.dtype))
    z = alpha[:, None, None] * e + sigma[:, None, None] * eps
    level = torch.where(noisy, g[:, None].expand_as(noisy).to(e.dtype), torch.tensor(-math.inf, dtype=e.dtype))
    return FlowInputs(z, level)


def clean_prefix(batch: Batch, generator: torch.Generator | None = None,
                 share: float = TrainConfig.flow_prefix_share) -> torch.Tensor:
    """The positions to noise `# (B, L)`: the targets, less a random prefix (a prompt) in `share` of the rows
    that are all target (text)."""
    B, L = batch.ids.shape
    noisy = batch.target.clone()
    whole = batch.target.all(dim=1)  # text rows: no prompt of their own
    keep = (torch.rand(B, generator=generator) < share) & whole
    length = (torch.rand(B, generator=generator) * (L // 2 + 1)).long()  # (B,) 0..L/2
    prefix = torch.arange(L)[None, :] < torch.where(keep, length, 0)[:, None]
    return noisy & ~prefix


def flow_loss(model: torch.nn.Module, batch: Batch, generator: torch.Generator | None = None,
              t: torch.Tensor | None = None, fit_schedule: bool = True,
              prefix_share: float = TrainConfig.flow_prefix_share,
              uniform_share: float = TrainConfig.flow_uniform_share) -> torch.Tensor:
    """Mean cross-entropy (nats) over noised positions, plus the schedule's fit to it."""
    core: FlowTransformer = getattr(model, "module", model)  # under DDP the wrapper runs, the model knows
    B = batch.ids.shape[0]
    if t is None:
        t = low_discrepancy_uniform(B, generator).view(B)
    g = core.schedule(t).detach()  # (B,) the network sees g, the schedule learns only from its fit
    scheduled = torch.ones(B, dtype=torch.bool)
    if uniform_share > 0:  # drawn only then, so the recipes without it keep their random stream
        scheduled = torch.rand(B, generator=generator) >= uniform_share
        low, high = core.schedule.g_min, core.schedule.g_max
        g = torch.where(scheduled, g, low + (high - low) * torch.rand(B, generator=generator))
    noisy = clean_prefix(batch, generator, prefix_share) & batch.valid
    inputs = noised(core, batch.ids, noisy, g, generator)
    use = torch.rand(B, generator=generator) < SELF_COND_SHARE
    if bool(use.any()):  # the first pass runs only the rows that use it
        with torch.no_grad():
            first = model(batch.ids[use], valid=batch.valid[use], flow=FlowInputs(inputs.z[use], inputs.g[use]))
        inputs.self_cond = torch.zeros_like(inputs.z)
        inputs.self_cond[use] = core.expected_embedding(first).detach()
    logits = model(batch.ids, valid=batch.valid, flow=inputs)  # (B, L, V)
    ce = F.cross_entropy(logits.transpose(1, 2), batch.ids, reduction="none")  # (B, L)
    per_row = (ce * noisy).sum(1) / noisy.sum(1).clamp(min=1)  # (B,)
    loss = (ce * noisy).sum() / noisy.sum().clamp(min=1)
    if fit_schedule:
        rows = noisy.any(dim=1) & scheduled
        if bool(rows.any()):
            loss = loss + core.schedule.fit_loss(g[rows], per_row[rows])
    return loss


@torch.no_grad()
def flow_eval_ce(model: FlowTransformer, batch: Batch, *, n_t: int = 8, seed: int = 0) -> float:
    """A fixed-draw held-out loss for training curves: mean x-prediction cross-entropy over n_t stratified
    noise levels (not a likelihood bound: `unmask eval` reports the ODE bound)."""
    gen = torch.Generator().manual_seed(seed)
    B = batch.ids.shape[0]
    total = 0.0
    for k in range(n_t):
        t = ((k + torch.rand(B, generator=gen)) / n_t).clamp(1e-3, 1 - 1e-3)
        total += float(flow_loss(model, batch, gen, t=t, fit_schedule=False))
    return total / n_t
