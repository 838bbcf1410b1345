"""THE denoising loop: semi-autoregressive blocks, a pluggable step rule, EOS-aware early exit."""
from __future__ import annotations

import time

import torch

from unmask.decode.cache_policy import CachePolicy, Window
from unmask.decode.early_commit import EarlyCommit
from unmask.decode.result import GenerationResult, cut_at_eos
from unmask.decode.sampling import gumbel_argmax
from unmask.decode.schedule import block_spans, steps_per_block
from unmask.decode.strategies.base import Strategy


def prompt_layout(prompt_mask: torch.Tensor | None, prompt_ids: torch.Tensor, new_tokens: int
                  ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Validity `# (B, P+N)` (None if no padding) and RoPE positions `# (B, P+N)` for left-padded prompts."""
    B, P = prompt_ids.shape
    if prompt_mask is None or bool(prompt_mask.all()):
        return None, torch.arange(P + new_tokens).expand(B, -1)
    valid = torch.cat([prompt_mask.bool(), torch.ones(B, new_tokens, dtype=torch.bool)], dim=1)
    return valid, (valid.long().cumsum(dim=1) - 1).clamp(min=0)


@torch.no_grad()
def denoise(model: torch.nn.Module, prompt_ids: torch.Tensor, strategy: Strategy, *, gen_length: int,
            block_size: int, steps: int | None = None, temperature: float = 0.0, stop_at_eos: bool = True,
            prompt_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
            cache: CachePolicy | None = None, early_commit: EarlyCommit | None = None) -> GenerationResult:
    """Fill `gen_length` masks after the prompt, block by block, `strategy` choosing what each step commits.

    cache: which columns each step recomputes (default: all). early_commit: Prophet's all-at-once commit.
    With stop_at_eos, a row whose answer has ended gets EOS in its later blocks without computing them.
    """
    t0 = time.perf_counter()
    mask_id, eos_id = model.mask_token_id, model.eos_token_id
    B, P = prompt_ids.shape
    x = torch.cat([prompt_ids, torch.full((B, gen_length), mask_id, dtype=torch.long)], dim=1)
    valid, positions = prompt_layout(prompt_mask, prompt_ids, gen_length)
    strategy.check_model(model)
    cache = cache or CachePolicy()
    cache.start(model, x, positions, valid, shift=bool(getattr(model.config, "logits_shift", False)))
    budgets = steps_per_block(gen_length, block_size, steps)
    ends_early = stop_at_eos and eos_id is not None
    nfe, used = 0, []
    solo = torch.zeros(B, dtype=torch.long)  # (B,) passes each row took part in with masks left in its block
    for (s, e), budget in zip(block_spans(gen_length, block_size), budgets):
        s, e = P + s, P + e
        block = x[:, s:e]  # a view: committing into it updates x
        if ends_early:  # rows that already hold an EOS: their later blocks are EOS, never computed
            ended = (x[:, P:s] == eos_id).any(dim=1, keepdim=True)  # (B, 1)
            block.copy_(torch.where(ended & (block == mask_id), eos_id, block))
        masked = block == mask_id
        strategy.begin_block(masked, budget)
        step = 0
        while masked.any():
            window = cache.step(x, (s, e), step)
            nfe += 1
            solo += masked.any(dim=1)
            logits = window.at(s, e)  # (B, Lb, V)
            x0 = gumbel_argmax(logits, temperature, generator, forbid=mask_id)  # (B, Lb)
            conf = strategy.confidence(logits, x0, generator).masked_fill(~masked, float("-inf"))
            commit = strategy.select(step, conf, masked) & masked
            commit, x0 = strategy.review(x, valid, positions, (s, e), x0, conf, commit)
            block[commit] = x0[commit]
            if early_commit is not None:
                commit_all(x, window, early_commit, P, gen_length, mask_id, temperature, generator)
            masked = block == mask_id
            step += 1
            if step > block.shape[1] and masked.any():  # every rule commits at least one token per step
                raise RuntimeError(f"strategy {strategy.name!r} made no progress on a block of {block.shape[1]}")
        used.append(step)
        if ends_early and bool((x[:, P:e] == eos_id).any(dim=1).all()):
            break  # every row has ended: later blocks are never computed
    tokens, lengths, finished = cut_at_eos(x[:, P:], eos_id, model.pad_token_id, stop_at_eos)
    return GenerationResult(tokens, lengths, finished, nfe, time.perf_counter() - t0, used, solo_nfe=solo.tolist())


def commit_all(x: torch.Tensor, window: Window, rule: EarlyCommit, P: int, gen_length: int, mask_id: int,
               temperature: float, generator: torch.Generator | None) -> None:
    """Prophet: rows whose answer has settled commit every mask this step scored, in place in x `# (B, T)`."""
    answer = window.targets >= P
    cols = window.targets[answer]  # (W,)
    logits = window.logits[:, answer]  # (B, W, V)
    masked = x[:, cols] == mask_id  # (B, W)
    progress = 1 - (x[:, P:] == mask_id).sum(dim=1) / gen_length  # (B,)
    rows = rule.fires(logits, masked, progress)
    if not rows.any():
        return
    x0 = gumbel_argmax(logits[rows], temperature, generator, forbid=mask_id)  # (R, W)
    view = x[rows][:, cols]
    x[rows.nonzero(), cols] = torch.where(masked[rows], x0, view)
