"""RL objectives for masked-diffusion models: diffu-GRPO (d1), wd1 and trace-aware GRPO (TraceRL).

A dLLM's sequence likelihood is intractable, so each objective scores answer tokens with a cheap estimate:
- `one_step_logprobs` (d1): one pass with the whole answer masked and each prompt token masked with
  probability p_mask_prompt; the log-probability of every answer token at its position.
- `trace_logprobs` (TraceRL): one pass per decoding step s the rollout took, with every token committed at a
  step >= s masked (those never committed too), scoring only the tokens committed at s: the context each
  token was chosen in, so the loss follows the trajectory the (fast) decoder actually took. The trace is the
  decoder's view without its cache's approximations (a dual cache's stale keys are not replayed).

Shapes: N rollouts, L = prompt + answer columns (right-padded), V the vocabulary.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from unmask.data.batch import Batch


def one_step_logprobs(model: torch.nn.Module, batch: Batch, scored: torch.Tensor, mask_id: int,
                      p_mask_prompt: float, generator: torch.Generator) -> torch.Tensor:
    """d1's per-token estimate `# (N, L)` (0 off `scored`): answer fully masked, prompt tokens masked with
    probability p_mask_prompt by `generator` (the same seed gives the same masks: old and new log-probs of
    one inner update must see one draw)."""
    prompt = batch.valid & ~batch.target
    draw = torch.rand(batch.ids.shape, generator=generator).to(batch.ids.device)
    masked = batch.target | (prompt & (draw < p_mask_prompt))
    noisy = torch.where(masked, torch.full_like(batch.ids, mask_id), batch.ids)
    lp = distinct_token_logprobs(model, noisy, batch.valid, batch.ids)
    return lp.masked_fill(~scored, 0.0)


def trace_logprobs(model: torch.nn.Module, batch: Batch, scored: torch.Tensor, steps: torch.Tensor, mask_id: int,
                   chunk: int = 64) -> torch.Tensor:
    """TraceRL's per-token estimate `# (N, L)` (0 off `scored`): each scored token's log-probability in the
    pass that mirrors the step that committed it (`steps` from the rollout's trace; 0 = never committed)."""
    out = torch.zeros(batch.ids.shape, dtype=torch.float32, device=batch.ids.device)
    pending = steps.masked_fill(steps == 0, torch.iinfo(torch.long).max)  # never committed: always masked
    jobs = [(i, int(s)) for i in range(batch.ids.shape[0]) for s in torch.unique(steps[i][scored[i]]).tolist()]
    if not jobs:
        return out
    rows = torch.tensor([i for i, _ in jobs], device=batch.ids.device)  # (J,) one pass per (row, step)
    at = torch.tensor([s for _, s in jobs], device=batch.ids.device).unsqueeze(1)  # (J, 1)
    ids = batch.ids[rows]
    hidden = batch.target[rows] & (pending[rows] >= at)  # (J, L): committed at or after this step
    noisy = torch.where(hidden, torch.full_like(ids, mask_id), ids)
    lp = distinct_token_logprobs(model, noisy, batch.valid[rows], ids, chunk)  # (J, L)
    j, col = (scored[rows] & (steps[rows] == at)).nonzero(as_tuple=True)  # the tokens of each job's step
    return out.index_put((rows[j], col), lp[j, col])  # each (row, column) is scored in one step only


def distinct_token_logprobs(model: torch.nn.Module, noisy: torch.Tensor, valid: torch.Tensor, ids: torch.Tensor,
                            chunk: int | None = None) -> torch.Tensor:
    """log p(ids) `# (N, L)`, row i under the model's logits on (noisy[i], valid[i]), running each distinct
    input once (`chunk` rows a pass). The answers of a group mostly show the model the very same input: with a
    clean prompt and the whole answer masked every one of them does, so one pass serves all G. The gradient
    reaching a shared pass is the sum of its rows', the same as one pass each."""
    width = noisy.shape[1]
    key = torch.cat([noisy, valid.to(noisy.dtype)], dim=1)  # (N, 2L)
    distinct, inverse = torch.unique(key, dim=0, return_inverse=True)  # (U, 2L), (N,)
    parts = [torch.log_softmax(model(part[:, :width], valid=part[:, width:].bool()).float(), dim=-1)
             for part in distinct.split(chunk or len(distinct))]
    logprobs = torch.cat(parts)  # (U, L, V)
    cols = torch.arange(width, device=ids.device).unsqueeze(0)  # (1, L)
    return logprobs[inverse.unsqueeze(1), cols, ids]  # (N, L): no (N, L, V) copy


def group_advantages(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """r - mean(r) within each group of `group` answers to one prompt `# (N,)` (d1: no division by the std)."""
    grouped = rewards.view(-1, group)
    return (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)


def clipped_policy_loss(logp: torch.Tensor, old: torch.Tensor, advantages: torch.Tensor, scored: torch.Tensor,
                        clip_eps: float, ref: torch.Tensor | None = None, beta: float = 0.0
                        ) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO's loss over scored tokens: -mean(min(r A, clip(r, 1-eps, 1+eps) A) - beta KL), r = exp(logp - old),
    KL the k3 estimate exp(ref - logp) - (ref - logp) - 1 to a frozen reference. Also the ratio's largest
    distance from 1 and the share of clipped tokens."""
    ratio = torch.exp(logp - old)
    adv = advantages.unsqueeze(1)  # (N, 1)
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    kl = torch.zeros_like(logp)
    if beta and ref is not None:
        kl = torch.exp(ref - logp) - (ref - logp) - 1
    per_token = -(surrogate - beta * kl)
    n = scored.sum().clamp(min=1)
    loss = (per_token * scored).sum() / n
    with torch.no_grad():
        clipped = ((ratio - 1).abs() > clip_eps) & scored
        stats = {"ratio_dev": float((ratio - 1).abs()[scored].max()) if scored.any() else 0.0,
                 "clipped": float(clipped.sum() / n), "kl": float((kl * scored).sum() / n)}
    return loss, stats


def wd1_loss(logp: torch.Tensor, advantages: torch.Tensor, scored: torch.Tensor, group: int) -> torch.Tensor:
    """wd1's ratio-free weighted likelihood: within each group, raise the answers' log-likelihoods with
    weights softmax(A) and lower them with weights softmax(-A); an answer's log-likelihood is the sum of its
    scored tokens' one-step log-probs. No old or reference pass is needed. Averaged over groups."""
    seq = (logp * scored).sum(dim=1).view(-1, group)  # (groups, G)
    adv = advantages.view(-1, group)
    positive, negative = F.softmax(adv, dim=1), F.softmax(-adv, dim=1)
    return (-(positive * seq).sum(dim=1) + (negative * seq).sum(dim=1)).mean()
