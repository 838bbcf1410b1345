"""Log-likelihood of a continuation given a context: exact for AR models, LLaDA's Monte Carlo estimate
for masked diffusion (what lm-evaluation-harness's loglikelihood tasks ask of a model).

Diffusion (LLaDA, `get_log_likelihood` of its evaluation code): each draw masks l of the continuation's
L tokens, l uniform in 1..L (stratified across a batch of draws, as LLaDA does, so a batch spans the
whole range), and scores the cross-entropy of the masked tokens divided by the masked share l / L; the
estimate is minus the mean over `mc_num` draws. It is the masked-diffusion ELBO, a lower bound on the
log-likelihood, unbiased over the draws, and reproducible: the draws come from a generator seeded with
`seed`. A Dream-style model (`logits_shift`) scores token i from the logits at i - 1.

`token_scores` splits the same figure by token (what `echo` with `logprobs` returns over HTTP): for AR
each token's exact log-probability; for diffusion token i's share of the estimate, the mean over draws
of log p(x_i) / (l / L) counted in the draws that mask i. The shares sum to `loglikelihood` exactly (one
code path), but one share alone is a term of a bound, not a log-probability: it can be below a token's
true log-probability, and an alternative's value is the same weighted mean for that other token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unmask.models.paged_cache import first_parameter


# A continuous model's likelihood is a bound over a whole span (unmask/flow_likelihood.py), with no share per token.
NO_TOKEN_SCORES = ("a continuous (embedding-space) diffusion model has no per-token log-probabilities: its likelihood "
                   "is an ODE bound over a whole span (unmask eval reports it), so loglikelihood and echo with "
                   "logprobs are not available for it")


@dataclass(frozen=True)
class TokenScore:
    """One scored token: its log-probability (or diffusion share) and its likeliest alternatives."""

    logprob: float
    alternatives: list[tuple[int, float]]


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
    scores = token_scores(model, ctx + cont, len(ctx), mc_num=mc_num, batch_size=batch_size, seed=seed)
    return sum(s.logprob for s in scores)


@torch.no_grad()
def token_scores(model: torch.nn.Module, ids: list[int], n_ctx: int, *, top: int = 0, mc_num: int = 128,
                 batch_size: int = 32, seed: int = 0) -> list[TokenScore]:
    """One TokenScore per token of `ids[n_ctx:]`, each with its `top` likeliest alternatives."""
    if model.config.kind == "continuous":
        raise ValueError(NO_TOKEN_SCORES)
    if len(ids) > model.config.max_seq_len:
        raise ValueError(f"{len(ids)} tokens exceed this model's context of {model.config.max_seq_len}")
    if n_ctx >= len(ids):
        raise ValueError("there is no token to score after the context")
    device = first_parameter(model).device
    seq = torch.tensor(ids, dtype=torch.long, device=device)
    if model.config.kind == "ar":
        values, alts = ar_scores(model, seq, n_ctx, top)
    else:
        if mc_num < 1 or batch_size < 1 or mc_num % batch_size:
            raise ValueError(f"mc_num ({mc_num}) must be a positive multiple of batch_size ({batch_size})")
        values, alts = diffusion_scores(model, seq, n_ctx, mc_num, batch_size, seed, top)
    return [TokenScore(v, a) for v, a in zip(values, alts)]


def ar_scores(model: torch.nn.Module, seq: torch.Tensor, n_ctx: int, top: int
              ) -> tuple[list[float], list[list[tuple[int, float]]]]:
    if n_ctx == 0:
        raise ValueError("an AR model needs a context of at least one token to score the first one")
    logits = model(seq[None, :-1])[0]  # (L-1, V): position i scores token i+1
    logp = F.log_softmax(logits.float(), dim=-1)[n_ctx - 1:]  # (L-n_ctx, V)
    picked = logp.gather(-1, seq[n_ctx:, None])[:, 0]
    return picked.tolist(), alternatives(logp, top)


def diffusion_scores(model: torch.nn.Module, seq: torch.Tensor, n_ctx: int, mc_num: int, batch_size: int,
                     seed: int, top: int) -> tuple[list[float], list[list[tuple[int, float]]]]:
    L = seq.numel() - n_ctx
    shift = bool(getattr(model.config, "logits_shift", False))
    if n_ctx == 0 and shift:
        raise ValueError("a shifted-logits (Dream-style) model needs a context of at least one token")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    batch = seq[None].repeat(batch_size, 1)  # (b, T)
    picked = torch.zeros(L, dtype=torch.float64, device=seq.device)  # (L,): summed weighted log p(x_i)
    every = torch.zeros(L, model.config.vocab_size, dtype=torch.float64, device=seq.device) if top else None
    for _ in range(mc_num // batch_size):
        masked, share = mask_draws(batch_size, L, gen)  # (b, L), (b,)
        masked, share = masked.to(seq.device), share.to(seq.device)
        is_mask = torch.cat([torch.zeros(batch_size, n_ctx, dtype=torch.bool, device=seq.device), masked], dim=1)
        noisy = torch.where(is_mask, torch.full_like(batch, model.mask_token_id), batch)
        logits = model(noisy).float()  # (b, T, V)
        if shift:
            logits = shift_logits(logits)
        logp = F.log_softmax(logits[:, n_ctx:], dim=-1)  # (b, L, V)
        weight = masked.double() / share.double()[:, None]  # (b, L): 1 / (l / L) where masked, else 0
        picked += (weight * logp.gather(-1, seq[n_ctx:].expand(batch_size, -1)[..., None])[..., 0]).sum(0)
        if every is not None:
            every += (weight[..., None] * logp).sum(0)
    values = (picked / mc_num).tolist()
    return values, alternatives(every / mc_num, top) if every is not None else [[] for _ in values]


def shift_logits(logits: torch.Tensor) -> torch.Tensor:
    """A Dream-style model's logits `# (B, T, V)` realigned so that position i scores token i (its logits at
    i - 1 do; the first position keeps its own)."""
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def alternatives(scores: torch.Tensor, top: int) -> list[list[tuple[int, float]]]:
    """The `top` highest-scoring tokens of each row of `scores` `# (L, V)`, as (id, value)."""
    if not top:
        return [[] for _ in range(scores.shape[0])]
    values, ids = scores.topk(min(top, scores.shape[-1]), dim=-1)
    return [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]


def mask_draws(b: int, L: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA's stratified draws: row i masks l_i of L positions, l_i spread over 1..L from one uniform start."""
    k = int(torch.randint(1, L + 1, (), generator=gen))
    counts = torch.round(torch.linspace(float(k), k + (b - 1) * (L / b), steps=b)).long()
    counts = ((counts - 1) % L) + 1  # (b,) in 1..L
    rows = torch.arange(L).repeat(b, 1) < counts[:, None]  # (b, L): the first l_i positions...
    for i in range(b):  # ...then shuffled
        rows[i] = rows[i][torch.randperm(L, generator=gen)]
    return rows, counts.float() / L
