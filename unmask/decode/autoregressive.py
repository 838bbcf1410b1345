"""Left-to-right decoding for causal models: greedy or top-k/top-p sampling, with or without a KV cache."""
from __future__ import annotations

import time

import torch

from unmask.decode.loop import prompt_layout
from unmask.decode.result import GenerationResult, cut_at_eos
from unmask.decode.sampling import sample_next
from unmask.models.kv_cache import KVCache


@torch.no_grad()
def autoregress(model: torch.nn.Module, prompt_ids: torch.Tensor, *, max_new_tokens: int, temperature: float = 0.0,
                top_k: int | None = None, top_p: float | None = None, stop_at_eos: bool = True, use_cache: bool = True,
                prompt_mask: torch.Tensor | None = None, generator: torch.Generator | None = None) -> GenerationResult:
    t0 = time.perf_counter()
    eos_id = model.eos_token_id
    B, P = prompt_ids.shape
    valid, positions = prompt_layout(prompt_mask, prompt_ids, max_new_tokens)
    valid = valid if valid is not None else torch.ones(B, P + max_new_tokens, dtype=torch.bool)
    tokens = torch.full((B, max_new_tokens), model.pad_token_id, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    cache = KVCache.for_model(model, B, P + max_new_tokens) if use_cache else None
    logits = model(prompt_ids, positions[:, :P], valid=valid[:, :P], cache=cache)[:, -1]  # (B, V)
    nfe = 1
    solo = torch.ones(B, dtype=torch.long)  # (B,) passes each row needed: until it has sampled EOS
    for i in range(max_new_tokens):
        nxt = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        if stop_at_eos and eos_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)  # ended rows only pad with EOS
            done |= nxt == eos_id
        tokens[:, i] = nxt
        if i + 1 == max_new_tokens or (stop_at_eos and bool(done.all())):
            break
        n = P + i + 1
        if cache is not None:
            logits = model(nxt[:, None], positions[:, n - 1:n], cache=cache, start=n - 1)[:, -1]
        else:
            seq = torch.cat([prompt_ids, tokens[:, :i + 1]], dim=1)
            logits = model(seq, positions[:, :n], valid=valid[:, :n])[:, -1]
        nfe += 1
        solo += ~done
    out, lengths, finished = cut_at_eos(tokens, eos_id, model.pad_token_id, stop_at_eos)
    return GenerationResult(out, lengths, finished, nfe, time.perf_counter() - t0, solo_nfe=solo.tolist())
