"""Approximate caches (prefix, dual, delayed): exact when refreshed every step, cheaper otherwise."""
from __future__ import annotations

import pytest
import torch

import unmask
from conftest import MASK, left_pad, random_model, random_prompt

CACHES = ("prefix", "dual", "delayed")
RULES = [{"strategy": "low_confidence"}, {"strategy": "threshold", "threshold": 0.2},
         {"strategy": "factor", "factor": 2.0}]


@pytest.fixture(scope="module")
def model():
    return random_model("diffusion", seed=5)


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["strategy"])
def test_refresh_every_step_equals_no_cache(model, cache, rule):
    rows = [random_prompt(n, seed=n)[0] for n in (4, 9)]
    ids, mask = left_pad(rows)
    kw = dict(max_new_tokens=24, block_size=8, stop_at_eos=False, prompt_mask=mask, **rule)
    plain = unmask.generate(model, ids, **kw)
    cached = unmask.generate(model, ids, cache=cache, refresh_every=1, **kw)
    assert torch.equal(cached.token_ids, plain.token_ids)
    assert cached.nfe == plain.nfe


@pytest.mark.parametrize("cache", CACHES)
def test_refresh_every_step_equals_no_cache_with_shifted_logits(cache):
    dream_like = random_model("diffusion", seed=6, logits_shift=True)
    prompt = random_prompt(6, seed=2, batch=2)
    kw = dict(strategy="threshold", threshold=0.2, max_new_tokens=16, block_size=8, stop_at_eos=False)
    plain = unmask.generate(dream_like, prompt, **kw)
    assert torch.equal(unmask.generate(dream_like, prompt, cache=cache, refresh_every=1, **kw).token_ids,
                       plain.token_ids)


@pytest.mark.parametrize("cache", CACHES)
def test_cached_decoding_fills_every_mask_and_batches_like_single_rows(model, cache):
    rows = [random_prompt(n, seed=10 + n)[0] for n in (5, 7)]
    ids, mask = left_pad(rows)
    kw = dict(strategy="threshold", threshold=0.2, max_new_tokens=24, block_size=8, stop_at_eos=False, cache=cache)
    batched = unmask.generate(model, ids, prompt_mask=mask, **kw)
    assert not bool((batched.token_ids == MASK).any())
    for i, r in enumerate(rows):  # every cache is the row's own: rows never interact through it
        assert torch.equal(batched.token_ids[i], unmask.generate(model, r[None], **kw).token_ids[0])


def test_cache_options_are_checked(model):
    prompt = random_prompt(5, seed=1)
    with pytest.raises(ValueError, match="unknown cache 'paged'"):
        unmask.generate(model, prompt, cache="paged")
    with pytest.raises(ValueError, match="refresh_every needs an approximate cache"):
        unmask.generate(model, prompt, strategy="low_confidence", refresh_every=2)
    with pytest.raises(ValueError, match="refresh_every must be at least 1"):
        unmask.generate(model, prompt, cache="dual", refresh_every=0)
    ar = random_model("ar", seed=1)
    with pytest.raises(ValueError, match="approximate cache for bidirectional"):
        unmask.generate(ar, prompt, strategy="ar", cache="prefix")


@pytest.mark.parametrize("G,B", [(16, 4), (12, 8), (10, 3)])
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["strategy"])
def test_exact_block_cache_gives_the_tokens_of_no_cache(G, B, rule):
    """Block-causal (block size 4): committed blocks are never recomputed, and nothing changes."""
    model = random_model("block-diffusion", seed=7)
    rows = [random_prompt(n, seed=n)[0] for n in (5, 10, 7)]  # prompts end mid-block, differently per row
    ids, mask = left_pad(rows)
    kw = dict(max_new_tokens=G, block_size=B, stop_at_eos=False, prompt_mask=mask, **rule)
    plain = unmask.generate(model, ids, cache="none", **kw)
    exact = unmask.generate(model, ids, cache="exact", **kw)
    assert torch.equal(exact.token_ids, plain.token_ids)


def test_exact_cache_refuses_bidirectional_models(model):
    with pytest.raises(ValueError, match="needs a block-causal"):
        unmask.generate(model, random_prompt(4, seed=0), cache="exact")
