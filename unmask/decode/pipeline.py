"""D2F pipelined decoding: several blocks of a block-causal model in flight at once.

Blocks follow the model's own block grid (the first may be cut short by the prompt). The last block
in flight gets a successor once its decoded share passes `add` (tau_add), before it is finished; a
block is fully active once its predecessor's decoded share passes `activate` (tau_act), and the first
unfinished block always is. Each step, every block in flight commits its masked positions whose
confidence reaches `threshold` (tau_conf); a fully active block commits at least its most confident
one. One forward pass serves every block in flight: they sit in one window after the committed
prefix, whose keys and values are cached exactly (a finished block never sees later ones).
With `add` >= 1 no block starts before its predecessor is finished: plain block-by-block decoding.

Rows decode one at a time: their prompts put the block grid at different offsets.
"""
from __future__ import annotations

import torch

from unmask.decode.cache_policy import ExactBlockCache
from unmask.decode.confidence import get_measure
from unmask.decode.result import GenerationResult, decode_each_row
from unmask.decode.sampling import gumbel_argmax


def grid_blocks(prompt_len: int, total: int, size: int) -> list[tuple[int, int]]:
    """The generated span [prompt_len, total) cut at multiples of the model's block size."""
    cuts = sorted({prompt_len, total, *range(size * (prompt_len // size + 1), total, size)})
    return list(zip(cuts[:-1], cuts[1:]))


@torch.no_grad()
def pipeline_row(model: torch.nn.Module, prompt: torch.Tensor, max_new_tokens: int, *, threshold: float,
                 add: float, activate: float, confidence: str, temperature: float, stop_at_eos: bool,
                 generator: torch.Generator | None) -> tuple[list[int], int]:
    """Decode one row `# (P,)`; returns (the generated span of N tokens, forward passes)."""
    size, mask_id, eos = model.config.block_size, model.mask_token_id, model.eos_token_id
    measure = get_measure(confidence)
    P = prompt.numel()
    T = P + max_new_tokens
    x = torch.cat([prompt, torch.full((max_new_tokens,), mask_id, dtype=torch.long)])[None]  # (1, T)
    blocks = grid_blocks(P, T, size)
    cache = ExactBlockCache()  # the exact cache block decoding uses: one window over every block in flight
    cache.start(model, x, torch.arange(T)[None], None, shift=False)
    added, nfe = 1, 0  # blocks in flight or done; forward passes

    def share(k: int) -> float:
        s, e = blocks[k]
        return float((x[0, s:e] != mask_id).float().mean())

    while True:
        first = next((k for k in range(added) if share(k) < 1.0), None)
        if first is None:
            ended = stop_at_eos and eos is not None and bool((x[0, P:blocks[added - 1][1]] == eos).any())
            if added == len(blocks) or ended:
                break
            added += 1  # the pipeline ran dry: start the next block
            continue
        s, e = blocks[first][0], blocks[added - 1][1]
        window = cache.step(x, (s, e), 0)
        nfe += 1
        for k in range(first, added):
            bs, be = blocks[k]
            block_logits = window.at(bs, be)  # (1, Lb, V)
            masked = x[0, bs:be] == mask_id
            if not masked.any():
                continue
            x0 = gumbel_argmax(block_logits, temperature, generator, forbid=mask_id)[0]
            conf = measure(block_logits, x0[None])[0].masked_fill(~masked, float("-inf"))
            commit = masked & (conf >= threshold)
            if (k == first or share(k - 1) > activate) and not commit.any():
                commit[conf.argmax()] = True
            x[0, bs:be][commit] = x0[commit]
        ended = stop_at_eos and eos is not None and bool((x[0, P:e] == eos).any())
        if added < len(blocks) and share(added - 1) > add and not ended:
            added += 1
    if added < len(blocks) and eos is not None:  # blocks never started: the answer ended before them
        x[0, blocks[added][0]:] = eos
    return x[0, P:].tolist(), nfe


@torch.no_grad()
def pipeline(model: torch.nn.Module, prompt_ids: torch.Tensor, *, max_new_tokens: int, threshold: float = 0.9,
             add: float = 0.1, activate: float = 0.95, confidence: str = "prob", temperature: float = 0.0,
             stop_at_eos: bool = True, prompt_mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> GenerationResult:
    """D2F defaults: tau_conf 0.9, tau_add 0.1, tau_act 0.95. nfe sums every row's passes."""
    if model.config.attention != "block-causal":
        raise ValueError(f"strategy 'd2f' needs a block-causal (block-diffusion) model; this one is {model.config.kind}")
    for name, v in (("threshold", threshold), ("add", add), ("activate", activate)):
        if not 0 < v <= 1.01:
            raise ValueError(f"{name} must be in (0, 1], not {v}")
    return decode_each_row(model, prompt_ids, prompt_mask, stop_at_eos, lambda prompt: pipeline_row(
        model, prompt, max_new_tokens, threshold=threshold, add=add, activate=activate, confidence=confidence,
        temperature=temperature, stop_at_eos=stop_at_eos, generator=generator))
