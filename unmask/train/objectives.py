"""Training losses: the masked-diffusion ELBO (LLaDA/MDLM) and next-token cross-entropy."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from unmask.data.batch import Batch


def mask_tokens(batch: Batch, mask_id: int, t: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each target token independently with probability t `# (B, 1)`; prompts never change.

    Returns (noisy ids `# (B, L)`, masked `# (B, L)` bool).
    """
    draw = torch.rand(batch.ids.shape, generator=generator)
    masked = (draw < t) & batch.target
    return torch.where(masked, torch.full_like(batch.ids, mask_id), batch.ids), masked


def low_discrepancy_uniform(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n draws in [0, 1), one per stratum of width 1/n, in row order `# (n, 1)`."""
    offset = torch.rand(1, generator=generator)
    return ((offset + torch.arange(n) / n) % 1.0).unsqueeze(1)


def mdm_loss(model: torch.nn.Module, batch: Batch, mask_id: int, *, eps: float = 1e-3,
             generator: torch.Generator | None = None, t: torch.Tensor | None = None) -> torch.Tensor:
    """Masked-diffusion loss per target token: sum over masked tokens of CE / t, divided by #targets.

    t ~ U(eps, 1) per sequence unless given, drawn low-discrepancy (MDLM): one uniform offset
    shifted by i/B for row i, so every batch spans the whole noise range. Each t is still U(eps, 1),
    so the expectation is the ELBO bound on the NLL per token, with less variance between batches.
    """
    if t is None:
        t = eps + (1 - eps) * low_discrepancy_uniform(batch.ids.shape[0], generator)
    noisy, masked = mask_tokens(batch, mask_id, t, generator)
    logits = model(noisy, valid=batch.valid)  # (B, L, V)
    weight = (1.0 / t).expand_as(masked)[masked]
    ce = F.cross_entropy(logits[masked], batch.ids[masked], reduction="none")
    return (ce * weight).sum() / batch.target.sum().clamp(min=1)


def ar_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token cross-entropy, averaged over target tokens (a target's first token is predicted too)."""
    logits = model(batch.ids, valid=batch.valid)[:, :-1]  # (B, L-1, V)
    scored = batch.target[:, 1:]
    return F.cross_entropy(logits[scored], batch.ids[:, 1:][scored])


@torch.no_grad()
def mdm_elbo(model: torch.nn.Module, batch: Batch, mask_id: int, *, n_t: int = 8, seed: int = 0) -> float:
    """Deterministic estimate of the diffusion NLL bound (nats/token): stratified t over n_t draws."""
    gen = torch.Generator().manual_seed(seed)
    B = batch.ids.shape[0]
    total = 0.0
    for k in range(n_t):
        t = (k + torch.rand(B, 1, generator=gen)) / n_t
        t = t.clamp(min=1e-3)
        total += float(mdm_loss(model, batch, mask_id, generator=gen, t=t))
    return total / n_t
