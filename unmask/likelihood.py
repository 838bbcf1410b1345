"""Log-likelihood of a continuation given a context: exact for AR models, LLaDA's Monte Carlo estimate
for masked diffusion (what lm-evaluation-harness's loglikelihood tasks ask of a model).

Diffusion (LLaDA, `get_log_likelihood` of its evaluation code): each draw masks l of the continuation's
L tokens, l uniform in 1..L (stratified across a batch of draws, as LLaDA does, so a batch spans the
whole range), and scores the cross-entropy of the masked tokens divided by the masked share l / L; the
estimate is minus the mean over `mc_num` draws. It is the masked-diffusion ELBO, a lower bound on the
log-likelihood, unbiased over the draws, and reproducible: the draws come from a generator seeded with
`seed`. A Dream-style model (`logits_shift`) scores token i from the logits at i - 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from unmask.models.paged_cache import first_parameter


def token_ids(model: torch.nn.Module, text_or_ids: str | list[int]) -> list[int]:
    if isinstance(text_or_ids, str):
        if getattr(model, "tokenizer", None) is None:
            raise ValueError("this model has no tokenizer: give token ids")
        return model.tokenizer.encode(text_or_ids)
    return [int(t) for t in text_or_ids]


@torch.no_grad()
def loglikelihood(model: torch.nn.Module, context: str | list[int], continuation: str | list[int], *,
                  mc_num: int = 128, batch_size: int = 32, seed: int = 0) -> float:
    """log p(continuation | context) in nats: exact (AR) or LLaDA's `mc_num`-draw estimate (diffusion)."""
    ctx, cont = token_ids(model, context), token_ids(model, continuation)
    if not cont:
        raise ValueError("the continuation is empty")
    if len(ctx) + len(cont) > model.config.max_seq_len:
        raise ValueError(f"context and continuation ({len(ctx) + len(cont)} tokens) exceed this model's context "
                         f"of {model.config.max_seq_len}")
    device = first_parameter(model).device
    seq = torch.tensor(ctx + cont, dtype=torch.long, device=device)
    if model.config.kind == "ar":
        return ar_loglikelihood(model, seq, len(ctx))
    if mc_num < 1 or batch_size < 1 or mc_num % batch_size:
        raise ValueError(f"mc_num ({mc_num}) must be a positive multiple of batch_size ({batch_size})")
    return diffusion_loglikelihood(model, seq, len(ctx), mc_num, batch_size, seed)


def ar_loglikelihood(model: torch.nn.Module, seq: torch.Tensor, n_ctx: int) -> float:
    if n_ctx == 0:
        raise ValueError("an AR model needs a context of at least one token to score the first one")
    logits = model(seq[None, :-1])[0]  # (L-1, V): position i scores token i+1
    logp = F.log_softmax(logits.float(), dim=-1)
    targets = seq[1:]
    picked = logp.gather(-1, targets[:, None])[:, 0]  # (L-1,)
    return float(picked[n_ctx - 1:].sum())


def diffusion_loglikelihood(model: torch.nn.Module, seq: torch.Tensor, n_ctx: int, mc_num: int, batch_size: int,
                            seed: int) -> float:
    L = seq.numel() - n_ctx
    if n_ctx == 0 and getattr(model.config, "logits_shift", False):
        raise ValueError("a shifted-logits (Dream-style) model needs a context of at least one token")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shift = int(getattr(model.config, "logits_shift", False))
    batch = seq[None].repeat(batch_size, 1)  # (b, T)
    total = 0.0
    for _ in range(mc_num // batch_size):
        masked, share = mask_draws(batch_size, L, gen)  # (b, L), (b,)
        is_mask = torch.cat([torch.zeros(batch_size, n_ctx, dtype=torch.bool), masked], dim=1).to(seq.device)
        noisy = torch.where(is_mask, torch.full_like(batch, model.mask_token_id), batch)
        logits = model(noisy).float()  # (b, T, V)
        if shift:  # Dream: logits at i score token i + 1
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        ce = F.cross_entropy(logits[is_mask], batch[is_mask], reduction="none")  # (masked,)
        weights = share.to(seq.device)[:, None].expand(-1, seq.numel())[is_mask]
        total += float((ce / weights).sum()) / batch_size
    return -total / (mc_num // batch_size)


def mask_draws(b: int, L: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA's stratified draws: row i masks l_i of L positions, l_i spread over 1..L from one uniform start."""
    k = int(torch.randint(1, L + 1, (), generator=gen))
    counts = torch.round(torch.linspace(float(k), k + (b - 1) * (L / b), steps=b)).long()
    counts = ((counts - 1) % L) + 1  # (b,) in 1..L
    rows = torch.arange(L).repeat(b, 1) < counts[:, None]  # (b, L): the first l_i positions...
    for i in range(b):  # ...then shuffled
        rows[i] = rows[i][torch.randperm(L, generator=gen)]
    return rows, counts.float() / L
