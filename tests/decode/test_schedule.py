"""The denoising schedule: LLaDA's transfer counts and the split of steps over blocks."""
from __future__ import annotations

import random

import pytest
import torch

from unmask.decode.schedule import block_spans, steps_per_block, transfer_counts


def llada_num_transfer_tokens(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's get_num_transfer_tokens, transcribed."""
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    out = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        out[i, :remainder[i]] += 1
    return out


def test_transfer_counts_match_llada_definition():
    """Each step commits mask_count // steps, the first (mask_count % steps) steps one more."""
    rng = random.Random(0)
    for _ in range(50):
        B, L, steps = rng.randint(1, 4), rng.randint(1, 40), rng.randint(1, 45)
        masked = torch.rand(B, L, generator=torch.Generator().manual_seed(rng.randint(0, 999))) < rng.random()
        counts = transfer_counts(masked, steps)
        assert counts.shape == (B, steps)
        assert torch.equal(counts, llada_num_transfer_tokens(masked, steps))
        assert torch.equal(counts.sum(dim=1), masked.sum(dim=1))
        assert bool((counts[:, :-1] >= counts[:, 1:]).all()), "never more tokens late than early"


def test_transfer_counts_examples():
    """Worked examples: 10 masks over 4 steps is 3,3,2,2; fewer masks than steps leaves zeros."""
    assert transfer_counts(torch.ones(1, 10, dtype=torch.bool), 4).tolist() == [[3, 3, 2, 2]]
    assert transfer_counts(torch.ones(1, 2, dtype=torch.bool), 4).tolist() == [[1, 1, 0, 0]]
    rows = torch.tensor([[True] * 5 + [False] * 3, [True] * 8])
    assert transfer_counts(rows, 3).tolist() == [[2, 2, 1], [3, 3, 2]]


def test_block_spans_cover_the_span():
    assert block_spans(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert block_spans(8, 8) == [(0, 8)]


@pytest.mark.parametrize("gen, block, steps, expected", [
    (32, 8, None, [8, 8, 8, 8]),  # one token per step
    (10, 4, None, [4, 4, 2]),
    (32, 8, 16, [4, 4, 4, 4]),  # LLaDA: steps // n_blocks each
    (32, 32, 5, [5]),
    (10, 4, 5, [2, 2, 1]),  # unequal blocks: proportional, at least one step each
])
def test_steps_per_block(gen, block, steps, expected):
    assert steps_per_block(gen, block, steps) == expected


def test_steps_per_block_needs_a_step_per_block():
    """Fewer steps than blocks is refused with a clear error."""
    with pytest.raises(ValueError, match="at least one step per block"):
        steps_per_block(32, 8, 3)


@pytest.mark.parametrize("gen, block, steps", [(4, 3, 2), (5, 2, 4), (9, 4, 6), (7, 2, 6)])
def test_unequal_blocks_never_exceed_the_step_budget(gen, block, steps):
    """BUG (unmask/decode/schedule.py:33): with a short last block, the per-block budgets are rounded
    independently (each at least 1) and can sum to more than `steps`, so a user asking for
    `--steps 4` over 5 tokens in blocks of 2 pays 5 forward passes. The total must stay <= steps."""
    budgets = steps_per_block(gen, block, steps)
    assert len(budgets) == len(block_spans(gen, block))
    assert sum(budgets) <= steps, budgets
