"""How many tokens each denoising step commits, and how steps split across blocks."""
from __future__ import annotations

import torch


def transfer_counts(masked: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's linear schedule: `# (B, steps)` counts, mask_count // steps each, remainder to the first steps.

    masked: `# (B, L)` bool, the masked positions of the block.
    """
    n = masked.sum(dim=1, keepdim=True)  # (B, 1)
    counts = (n // steps).expand(-1, steps).clone()
    remainder = (n % steps).squeeze(1)
    counts += (torch.arange(steps, device=masked.device)[None, :] < remainder[:, None]).long()
    return counts


def block_spans(gen_length: int, block_size: int) -> list[tuple[int, int]]:
    """[start, end) offsets of each block inside the generated span; the last may be shorter."""
    return [(s, min(s + block_size, gen_length)) for s in range(0, gen_length, block_size)]


def steps_per_block(gen_length: int, block_size: int, steps: int | None) -> list[int]:
    """Steps given to each block. None: one token per step. Equal blocks get steps // n_blocks (LLaDA)."""
    spans = block_spans(gen_length, block_size)
    if steps is None:
        return [e - s for s, e in spans]
    if steps < len(spans):
        raise ValueError(f"{steps} steps cannot cover {len(spans)} blocks; use at least one step per block")
    if gen_length % block_size == 0:
        return [steps // len(spans)] * len(spans)
    # Unequal blocks: steps in proportion to length, at least one each, summing to exactly `steps`.
    share = [steps * (e - s) / gen_length for s, e in spans]
    alloc = [max(1, int(x)) for x in share]
    while sum(alloc) < steps:
        i = max(range(len(alloc)), key=lambda j: share[j] - alloc[j])
        alloc[i] += 1
    while sum(alloc) > steps:
        i = max((j for j in range(len(alloc)) if alloc[j] > 1), key=lambda j: alloc[j] - share[j])
        alloc[i] -= 1
    return alloc
