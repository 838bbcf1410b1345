"""lm-eval's `is_greedy` for masked diffusion: would greedy decoding have produced this continuation?

Masked diffusion has no single greedy order, so this follows LLaDA's evaluation (`suffix_greedy_prediction`
in its eval_llada.py): the context then one [MASK] per continuation token, and each pass commits the one most
confident argmax among the masked positions, until none is left; greedy means the result is the
continuation. That takes as many forward passes as the continuation has tokens. (AR models get it exactly
from the pass that scores them: `UnmaskLM.score_and_greedy`.)
"""
from __future__ import annotations

import torch

from unmask.likelihood import shift_logits
from unmask.models.paged_cache import first_parameter


@torch.no_grad()
def diffusion_is_greedy(model: torch.nn.Module, context: list[int], continuation: list[int]) -> bool:
    device = first_parameter(model).device
    ctx = torch.tensor(context, dtype=torch.long, device=device)
    cont = torch.tensor(continuation, dtype=torch.long, device=device)
    shift = bool(getattr(model.config, "logits_shift", False))
    if shift and ctx.numel() == 0:
        raise ValueError("a shifted-logits (Dream-style) model needs a context of at least one token")
    n = ctx.numel()
    seq = torch.cat([ctx, torch.full_like(cont, model.mask_token_id)])[None]  # (1, T)
    for _ in range(cont.numel()):
        logits = model(seq).float()  # (1, T, V)
        if shift:
            logits = shift_logits(logits)
        masked = (seq[0] == model.mask_token_id).nonzero()[:, 0]
        masked = masked[masked >= n]  # a context token that is the mask id is not a position to fill
        probs = torch.softmax(logits[0, masked], dim=-1)  # (m, V)
        confidence, best = probs.max(dim=-1)
        pick = int(confidence.argmax())
        seq[0, masked[pick]] = best[pick]
    return bool(torch.equal(seq[0, n:], cont))
