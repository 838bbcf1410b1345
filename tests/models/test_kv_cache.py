"""The KV cache: cached forwards equal full forwards; trim and bounds behave."""
from __future__ import annotations

import pytest
import torch

from conftest import left_pad, random_model, random_prompt
from unmask.models.kv_cache import KVCache


@torch.no_grad()
def test_prefill_then_one_token_at_a_time_matches_full_forward():
    """Causal model: prefill + single-token cached steps give the full forward's logits."""
    model = random_model("ar")
    x = random_prompt(14, seed=3, batch=2)
    full = model(x)
    cache = KVCache.for_model(model, 2, 14)
    parts = [model(x[:, :6], cache=cache)]
    for i in range(6, 14):
        parts.append(model(x[:, i:i + 1], cache=cache, start=i))
        assert cache.length == i + 1
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


@torch.no_grad()
def test_cached_steps_with_left_padding_match_full_forward():
    """Left-padded prompts: cached decoding of the real tokens matches a full padded forward."""
    model = random_model("ar")
    ids, mask = left_pad([random_prompt(4, seed=1)[0], random_prompt(7, seed=2)[0]])
    new = random_prompt(3, seed=5, batch=2)
    x = torch.cat([ids, new], dim=1)
    valid = torch.cat([mask, torch.ones(2, 3, dtype=torch.bool)], dim=1)
    pos = (valid.long().cumsum(1) - 1).clamp(min=0)
    full = model(x, pos, valid=valid)
    cache = KVCache.for_model(model, 2, 10)
    parts = [model(ids, pos[:, :7], valid=mask, cache=cache)]
    for i in range(7, 10):
        parts.append(model(x[:, i:i + 1], pos[:, i:i + 1], cache=cache, start=i))
    out = torch.cat(parts, dim=1)
    assert torch.allclose(out[valid], full[valid], atol=1e-5)


@torch.no_grad()
def test_block_causal_block_by_block_cache_matches_full_forward():
    """Block-diffusion: writing one block at a time into the cache reproduces the full forward."""
    model = random_model("block-diffusion")  # block_size 4
    x = random_prompt(12, seed=4)
    full = model(x)
    cache = KVCache.for_model(model, 1, 12)
    parts = [model(x[:, s:s + 4], cache=cache, start=s) for s in range(0, 12, 4)]
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


@torch.no_grad()
def test_trim_forgets_slots_so_they_can_be_rewritten():
    """After trim(n), rewriting slot n with another token gives the logits of the new sequence."""
    model = random_model("ar")
    x = random_prompt(8, seed=6)
    y = x.clone()
    y[0, 5:] = torch.tensor([9, 10, 11])
    cache = KVCache.for_model(model, 1, 8)
    model(x, cache=cache)
    assert cache.length == 8
    cache.trim(5)
    assert cache.length == 5
    step = model(y[:, 5:6], cache=cache, start=5)
    assert cache.length == 6  # slots 6, 7 (stale x tokens) are not read
    assert torch.allclose(step[0, 0], model(y[:, :6])[0, 5], atol=1e-5)
    with pytest.raises(ValueError):
        cache.trim(9)
    with pytest.raises(ValueError):
        cache.trim(-1)


@torch.no_grad()
def test_rewriting_middle_slots_keeps_the_rest_readable():
    """Prefix/dual-cache use: rewriting slots 4..7 of a 12-slot cache still attends all 12 slots.

    One layer, so every cached key/value depends only on its own token and the check is exact.
    """
    model = random_model("diffusion", n_layers=1)
    x = random_prompt(12, seed=8)
    y = x.clone()
    y[0, 4:8] = torch.tensor([5, 6, 7, 8])
    cache = KVCache.for_model(model, 1, 12)
    model(x, cache=cache)
    out = model(y[:, 4:8], cache=cache, start=4)
    assert cache.length == 12
    assert torch.allclose(out, model(y)[:, 4:8], atol=1e-5)


def test_writing_beyond_max_len_raises():
    """A write past the cache's slots is a ValueError, never a silent truncation."""
    model = random_model("ar")
    cache = KVCache.for_model(model, 1, 6)
    with torch.no_grad():
        model(random_prompt(4, seed=0), cache=cache)
        with pytest.raises(ValueError):
            model(random_prompt(3, seed=1), cache=cache, start=4)
        with pytest.raises(ValueError):
            model(random_prompt(1, seed=1), cache=cache, start=6)
    with pytest.raises(ValueError):
        cache.check_room(-1, 1)


def test_for_model_shapes():
    """The cache is sized from the model config (grouped-query heads) and starts empty."""
    model = random_model("ar")
    cache = KVCache.for_model(model, 3, 10)
    assert cache.k.shape == (2, 3, 2, 10, 8)
    assert cache.length == 0 and cache.max_len == 10
