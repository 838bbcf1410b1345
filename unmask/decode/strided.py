"""Introspective strided decoding (I-DLM): one causal model drafts ahead and checks its own drafts.

The model is causal over committed tokens and was also trained (objective "isd") to fill N [MASK]
slots placed after them. Each forward pass reads [uncached committed tokens, the previous pass's
drafts, N masks] with a causal mask over the first two parts (the masks see everything):
- the causal logits verify the drafts: greedy accepts the longest prefix that equals the model's own
  argmax; sampling accepts draft d with probability min(1, p(d)/q(d)) (p: causal, q: the draft's
  distribution) and resamples from max(p - q, 0) on the first rejection;
- one more token always comes from the causal logits after the accepted prefix (the correction or
  a bonus), so every pass commits at least one token;
- when every draft was accepted, the mask slots after the bonus become the next drafts.
Accepted tokens are exactly what the causal model itself would produce, so greedy output equals
the same model's AR greedy output, in fewer forward passes. Committed keys/values are cached exactly;
drafts and masks are trimmed off the cache after each pass.
"""
from __future__ import annotations

import torch

from unmask.decode.result import GenerationResult, decode_each_row
from unmask.models.kv_cache import KVCache


def pass_mask(cached: int, n_causal: int, n_masks: int) -> torch.Tensor:
    """`# (1, 1, Q, cached+Q)`: all cached keys; causal among the first n_causal new tokens; masks see all."""
    Q = n_causal + n_masks
    new = torch.ones(Q, Q, dtype=torch.bool).tril()
    new[n_causal:, :] = True
    return torch.cat([torch.ones(Q, cached, dtype=torch.bool), new], dim=1)[None, None]


@torch.no_grad()
def strided_row(model: torch.nn.Module, prompt: list[int], max_new_tokens: int, *, temperature: float,
                stop_at_eos: bool, generator: torch.Generator | None) -> tuple[list[int], int]:
    """Generate for one row; returns (tokens, forward passes)."""
    N, eos, mask_id = model.config.ahead, model.eos_token_id, model.mask_token_id
    context = model.config.max_seq_len
    cache = KVCache.for_model(model, 1, len(prompt) + max_new_tokens + 2 * N + 1)
    committed, drafts, draft_q = list(prompt), [], []  # draft_q: the draft distributions (sampling)
    out: list[int] = []
    nfe = 0
    while len(out) < max_new_tokens:
        cached = cache.length
        fresh = committed[cached:] + drafts
        slots = max(0, min(N, context - cached - len(fresh)))  # no slot past the model's context
        ids = torch.tensor([fresh + [mask_id] * slots])  # (1, Q)
        positions = torch.arange(cached, cached + len(fresh) + slots)[None]
        logits = model(ids, positions, cache=cache, start=cached,
                       attn_mask=pass_mask(cached, len(fresh), slots))[0]  # (Q, V)
        nfe += 1
        first = len(fresh) - len(drafts) - 1  # the row of the last committed token: it predicts drafts[0]
        causal = logits[first:first + len(drafts) + 1]  # (K+1, V): row i predicts the token after drafts[:i]
        accepted, nxt = verify(causal, drafts, draft_q, temperature, generator)
        new = drafts[:accepted] + [nxt]
        cache.trim(len(committed) + accepted)  # keep the committed tokens and the accepted drafts only
        committed += new
        out += new
        if stop_at_eos and eos is not None and eos in new:
            out = out[:len(out) - len(new) + new.index(eos) + 1]
            break
        if accepted == len(drafts):  # all drafts held: the slots after the bonus token draft the next ones
            ahead = logits[len(fresh) + 1:]  # (slots-1, V); slot 0 sits where the bonus token now is
            drafts, draft_q = propose(ahead, temperature, generator)
        else:
            drafts, draft_q = [], []
    return out[:max_new_tokens], nfe


def distribution(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits.float() / temperature, dim=-1)


def propose(slots: torch.Tensor, temperature: float, generator: torch.Generator | None
            ) -> tuple[list[int], list[torch.Tensor]]:
    if temperature == 0:
        return slots.argmax(dim=-1).tolist(), []
    q = distribution(slots, temperature)  # (N-1, V)
    return torch.multinomial(q, 1, generator=generator).squeeze(1).tolist(), list(q)


def verify(causal: torch.Tensor, drafts: list[int], draft_q: list[torch.Tensor], temperature: float,
           generator: torch.Generator | None) -> tuple[int, int]:
    """(number of drafts accepted, the token after them) from the causal rows `# (K+1, V)`."""
    if temperature == 0:
        greedy = causal.argmax(dim=-1).tolist()
        k = 0
        while k < len(drafts) and drafts[k] == greedy[k]:
            k += 1
        return k, greedy[k]
    p = distribution(causal, temperature)  # (K+1, V)
    for k, d in enumerate(drafts):
        ratio = float(p[k, d] / draft_q[k][d].clamp(min=1e-12))
        if float(torch.rand(1, generator=generator)) >= min(1.0, ratio):
            residual = (p[k] - draft_q[k]).clamp(min=0)
            residual = residual / residual.sum() if float(residual.sum()) > 0 else p[k]
            return k, int(torch.multinomial(residual, 1, generator=generator))
    return len(drafts), int(torch.multinomial(p[len(drafts)], 1, generator=generator))


@torch.no_grad()
def strided(model: torch.nn.Module, prompt_ids: torch.Tensor, *, max_new_tokens: int, temperature: float = 0.0,
            stop_at_eos: bool = True, prompt_mask: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> GenerationResult:
    """Each row decodes on its own (rows accept different numbers of drafts); nfe counts every pass."""
    if not model.config.ahead:
        raise ValueError("strategy 'isd' needs a model trained to propose ahead (config 'ahead' > 0), "
                         "e.g. the bundled sort-isd")
    return decode_each_row(model, prompt_ids, prompt_mask, stop_at_eos, lambda prompt: strided_row(
        model, prompt.tolist(), max_new_tokens, temperature=temperature, stop_at_eos=stop_at_eos, generator=generator))
