"""Training losses: the masked-diffusion ELBO (LLaDA/MDLM) and next-token cross-entropy."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from unmask.data.batch import Batch
from unmask.likelihood import shift_logits


def mask_tokens(batch: Batch, mask_id: int, t: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each target token independently with probability t, one per row `# (B, 1)` or per position
    `# (B, L)`; prompts never change.

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
             generator: torch.Generator | None = None, t: torch.Tensor | None = None,
             t_max: float = 1.0) -> torch.Tensor:
    """Masked-diffusion loss per target token: sum over masked tokens of CE / t, divided by #targets.

    t ~ U(eps, 1) per sequence unless given, drawn low-discrepancy (MDLM): one uniform offset
    shifted by i/B for row i, so every batch spans the whole noise range. Each t is still U(eps, 1),
    so the expectation is the ELBO bound on the NLL per token, with less variance between batches.
    t_max < 1 (a curriculum's early steps) draws from U(eps, t_max) instead: only the easier rates.
    """
    if t is None:
        t = eps + (max(t_max, eps) - eps) * low_discrepancy_uniform(batch.ids.shape[0], generator)
    noisy, masked = mask_tokens(batch, mask_id, t, generator)
    logits = aligned_logits(model, model(noisy, valid=batch.valid))  # (B, L, V)
    weight = (1.0 / t).expand_as(masked)[masked]
    ce = F.cross_entropy(logits[masked], batch.ids[masked], reduction="none")
    return (ce * weight).sum() / batch.target.sum().clamp(min=1)


def aligned_logits(model: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """Logits `# (B, L, V)` with column i scoring token i. A Dream-style model (`logits_shift`: an AR model
    adapted into a diffusion one keeps its next-token head) scores token i at column i - 1; targets never
    sit at column 0 (a prompt comes first), so the first column's duplicate is never scored."""
    config = getattr(getattr(model, "module", model), "config", None)  # the model itself under DDP
    return shift_logits(logits) if getattr(config, "logits_shift", False) else logits


def ar_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token cross-entropy, averaged over target tokens (a target's first token is predicted too)."""
    logits = model(batch.ids, valid=batch.valid)[:, :-1]  # (B, L-1, V)
    scored = batch.target[:, 1:]
    return F.cross_entropy(logits[scored], batch.ids[:, 1:][scored])


@torch.no_grad()
def ar_nll_rows(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token NLL per row `# (B,)` in nats per scored token: `ar_loss` row by row (exact, nothing drawn)."""
    logits = model(batch.ids, valid=batch.valid)[:, :-1]  # (B, L-1, V)
    scored = batch.target[:, 1:]
    ce = F.cross_entropy(logits.transpose(1, 2).float(), batch.ids[:, 1:], reduction="none")  # (B, L-1)
    return (ce * scored).sum(1).double() / scored.sum(1).clamp(min=1).double()


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


@torch.no_grad()
def mdm_elbo_rows(model: torch.nn.Module, batch: Batch, mask_id: int, seeds: list[int], *, n_t: int = 8
                  ) -> torch.Tensor:
    """The diffusion NLL bound per row `# (B,)` in nats per target token, each row drawing its noise levels
    (stratified over n_t strata) and masks from its own generator seeded by `seeds[row]`: a row's figure is a
    pure function of (model, row, seed), whatever else shares its batch (`unmask eval` seeds by window)."""
    B, L = batch.ids.shape
    if len(seeds) != B:
        raise ValueError(f"mdm_elbo_rows needs one seed per row: {len(seeds)} seeds for {B} rows")
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    offsets = torch.stack([torch.rand(n_t, generator=g) for g in gens])  # (B, n_t)
    draws = torch.stack([torch.rand(n_t, L, generator=g) for g in gens], dim=1)  # (n_t, B, L)
    total = torch.zeros(B, dtype=torch.float64)
    for k in range(n_t):
        t = ((k + offsets[:, k:k + 1]) / n_t).clamp(min=1e-3)  # (B, 1)
        masked = (draws[k] < t) & batch.target
        noisy = torch.where(masked, torch.full_like(batch.ids, mask_id), batch.ids)
        logits = aligned_logits(model, model(noisy, valid=batch.valid))  # (B, L, V)
        ce = F.cross_entropy(logits.transpose(1, 2).float(), batch.ids, reduction="none")  # (B, L)
        total += ((ce * masked / t).sum(1)).double()
    return total / n_t / batch.target.sum(1).clamp(min=1).double()


def ahead_attention(valid: torch.Tensor, cut: torch.Tensor, ahead: int) -> torch.Tensor:
    """Mask `# (B, 1, L+N, L+N)` for [sequence, N [MASK] slots]: the sequence is causal (padding unseen);
    each slot sees the sequence up to its row's cut and every slot."""
    B, L = valid.shape
    i = torch.arange(L)
    seq = (i[None, :] <= i[:, None])[None] & valid[:, None, :]  # (B, L, L)
    seq = seq | torch.eye(L, dtype=torch.bool)[None]
    top = torch.cat([seq, torch.zeros(B, L, ahead, dtype=torch.bool)], dim=2)  # the sequence never sees slots
    upto = (i[None, :] <= cut[:, None]) & valid  # (B, L)
    bottom = torch.cat([upto[:, None, :].expand(B, ahead, L), torch.ones(B, ahead, ahead, dtype=torch.bool)], dim=2)
    return torch.cat([top, bottom], dim=1)[:, None]


def isd_loss(model: torch.nn.Module, batch: Batch, mask_id: int, ahead: int,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Next-token CE on the sequence plus CE of N [MASK] slots placed after a random cut in the answer,
    each predicting the token at its position from the prefix alone (I-DLM's masked-ahead objective).
    One forward pass: the slots ride along after the sequence with an attention mask of their own."""
    B, L = batch.ids.shape
    first = batch.target.float().argmax(dim=1)  # (B,) first answer token
    last = batch.valid.sum(dim=1) - 1  # (B,) last real token
    span = (last - first + 1).clamp(min=1)
    cut = first - 1 + (torch.rand(B, generator=generator) * span).long().clamp(max=span - 1)  # (B,) known up to here
    offsets = torch.arange(1, ahead + 1)
    slot_pos = cut[:, None] + offsets[None, :]  # (B, N)
    ids = torch.cat([batch.ids, torch.full((B, ahead), mask_id, dtype=torch.long)], dim=1)
    positions = torch.cat([torch.arange(L).expand(B, L), slot_pos], dim=1)
    logits = model(ids, positions, attn_mask=ahead_attention(batch.valid, cut, ahead))  # (B, L+N, V)
    scored = batch.target[:, 1:]
    ar = F.cross_entropy(logits[:, :L - 1][scored], batch.ids[:, 1:][scored])
    inside = slot_pos <= last[:, None]  # slots past the end have nothing to predict
    truth = batch.ids.gather(1, slot_pos.clamp(max=L - 1))
    ahead_ce = F.cross_entropy(logits[:, L:][inside], truth[inside]) if bool(inside.any()) else logits.sum() * 0
    return ar + ahead_ce


def block_diffusion_attention(valid: torch.Tensor, block_size: int) -> torch.Tensor:
    """BD3-LM's mask `# (B, 1, 2L, 2L)` over [x_t, x_0]: a noisy block sees itself (block-diagonal) and the
    clean blocks before it (offset block-causal); a clean block sees clean blocks up to its own.
    Padding is never seen; every query sees its own slot."""
    B, L = valid.shape
    blk = torch.arange(L) // block_size
    same = blk[:, None] == blk[None, :]  # (L, L)
    before = blk[None, :] < blk[:, None]
    upto = blk[None, :] <= blk[:, None]
    top = torch.cat([same, before], dim=1)  # x_t queries: [x_t keys, x_0 keys]
    bottom = torch.cat([torch.zeros(L, L, dtype=torch.bool), upto], dim=1)  # x_0 queries
    allowed = torch.cat([top, bottom], dim=0)[None] & torch.cat([valid, valid], dim=1)[:, None, :]
    return (allowed | torch.eye(2 * L, dtype=torch.bool)[None])[:, None]


def bd_loss(model: torch.nn.Module, batch: Batch, mask_id: int, block_size: int, *,
            clip: tuple[float, float] = (0.3, 0.8), generator: torch.Generator | None = None) -> torch.Tensor:
    """Block-diffusion loss (BD3-LM): each block b of the answer is noised at its own t_b ~ U(clip),
    the clipped schedule that drops the near-empty and near-full mask rates whose gradients are noisiest;
    every block's CE / t_b comes from one pass over [x_t, x_0]. Per target token, as mdm_loss."""
    B, L = batch.ids.shape
    n_blocks = -(-L // block_size)
    lo, hi = clip
    t_block = lo + (hi - lo) * torch.rand(B, n_blocks, generator=generator)  # (B, n_blocks)
    t = t_block.repeat_interleave(block_size, dim=1)[:, :L]  # (B, L)
    noisy, masked = mask_tokens(batch, mask_id, t, generator)
    ids = torch.cat([noisy, batch.ids], dim=1)  # (B, 2L)
    positions = torch.arange(L).repeat(2).expand(B, 2 * L)
    logits = model(ids, positions, attn_mask=block_diffusion_attention(batch.valid, block_size))[:, :L]
    ce = F.cross_entropy(logits[masked], batch.ids[masked], reduction="none")
    return (ce / t[masked]).sum() / batch.target.sum().clamp(min=1)
