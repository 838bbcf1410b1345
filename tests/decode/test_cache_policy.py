"""Approximate caches (prefix, dual, delayed): exact when refreshed every step, cheaper otherwise."""
from __future__ import annotations

import pytest
import torch

import unmask
from conftest import MASK, left_pad, random_model, random_prompt
import unmask.decode.cache_policy
from unmask.decode.cache_policy import DelayedCache, DualCache, PrefixCache

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


def run_window(policy, model, x, block, step_after_refresh):
    T = x.shape[1]
    positions = torch.arange(T).expand(x.shape[0], -1)
    policy.start(model, x, positions, None, shift=False)
    full = policy.step(x, block, 0)  # a refresh: the whole sequence
    part = policy.step(x, block, step_after_refresh)
    return full, part


@pytest.mark.parametrize("policy", [PrefixCache(), DualCache(), DelayedCache()], ids=lambda p: p.name)
def test_cached_step_on_unchanged_tokens_reproduces_the_full_logits(model, policy):
    """With nothing changed since the refresh, reading keys/values from the cache is the full computation."""
    x = torch.cat([random_prompt(8, seed=1, batch=2), torch.full((2, 16), MASK)], dim=1)
    full, part = run_window(policy, model, x, (8, 16), 1)
    assert part.targets.numel() < full.targets.numel()
    torch.testing.assert_close(part.logits, full.logits[:, part.targets], rtol=1e-4, atol=1e-4)


def test_each_cache_runs_only_its_columns(model):
    x = torch.cat([random_prompt(8, seed=1), torch.full((1, 16), MASK)], dim=1)
    x[0, 9] = 50  # one decoded column in the block
    _, prefix = run_window(PrefixCache(), model, x, (8, 16), 1)
    assert prefix.targets.tolist() == list(range(8, 24))  # the block and everything after it
    _, dual = run_window(DualCache(), model, x, (8, 16), 1)
    assert dual.targets.tolist() == list(range(8, 16))  # the block only
    policy = DelayedCache()
    full, _ = run_window(policy, model, x, (8, 16), 1)
    x[0, 10] = 51  # decoded by the last step: recomputed once more, then cached
    delayed = policy.step(x, (8, 16), 2)
    assert delayed.targets.tolist() == [8, 10] + list(range(11, 24))


def test_delayed_cache_refreshes_fully_every_k_steps(model):
    x = torch.cat([random_prompt(8, seed=1), torch.full((1, 8), MASK)], dim=1)
    policy = DelayedCache(refresh_every=3)
    policy.start(model, x, torch.arange(16)[None], None, shift=False)
    widths = [policy.step(x, (8, 16), i).targets.numel() for i in range(7)]
    assert widths == [16, 8, 8, 16, 8, 8, 16]


@pytest.mark.parametrize("cache", CACHES)
def test_cached_decoding_fills_every_mask_and_batches_like_single_rows(model, cache):
    rows = [random_prompt(n, seed=10 + n)[0] for n in (5, 7)]
    ids, mask = left_pad(rows)
    kw = dict(strategy="threshold", threshold=0.2, max_new_tokens=24, block_size=8, stop_at_eos=False, cache=cache)
    batched = unmask.generate(model, ids, prompt_mask=mask, **kw)
    assert not bool((batched.token_ids == MASK).any())
    if cache != "delayed":  # delayed recomputes columns masked in *any* row, so rows interact through it
        for i, r in enumerate(rows):
            assert torch.equal(batched.token_ids[i], unmask.generate(model, r[None], **kw).token_ids[0])


def test_cache_options_are_checked(model):
    prompt = random_prompt(5, seed=1)
    with pytest.raises(ValueError, match="unknown cache 'paged'"):
        unmask.generate(model, prompt, cache="paged")
    with pytest.raises(ValueError, match="refresh_every needs a cache"):
        unmask.generate(model, prompt, strategy="low_confidence", refresh_every=2)
    with pytest.raises(ValueError, match="refresh_every must be at least 1"):
        unmask.generate(model, prompt, cache="dual", refresh_every=0)
    ar = random_model("ar", seed=1)
    with pytest.raises(ValueError, match="diffusion options"):
        unmask.generate(ar, prompt, strategy="ar", cache="prefix")


@pytest.mark.parametrize("G,B", [(16, 4), (12, 8), (10, 3)])
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["strategy"])
def test_exact_block_cache_gives_the_tokens_of_no_cache(G, B, rule):
    """Block-causal (block size 4): committed blocks are never recomputed, and nothing changes."""
    model = random_model("block-diffusion", seed=7)
    rows = [random_prompt(n, seed=n)[0] for n in (5, 10, 7)]  # prompts end mid-block, differently per row
    ids, mask = left_pad(rows)
    kw = dict(max_new_tokens=G, block_size=B, stop_at_eos=False, prompt_mask=mask, **rule)
    plain = unmask.generate(model, ids, **kw)
    exact = unmask.generate(model, ids, cache="exact", **kw)
    assert torch.equal(exact.token_ids, plain.token_ids)


def test_exact_block_cache_recomputes_only_the_open_block():
    model = random_model("block-diffusion", seed=7)  # model block size 4
    x = torch.cat([random_prompt(6, seed=1), torch.full((1, 8), MASK)], dim=1)  # prompt ends mid-block
    policy = unmask.decode.cache_policy.ExactBlockCache()
    policy.start(model, x, torch.arange(14)[None], None, shift=False)
    assert policy.step(x, (6, 10), 0).targets.tolist() == list(range(0, 12))  # everything up to block end 12
    assert policy.step(x, (6, 10), 1).targets.tolist() == list(range(4, 12))  # block [4, 8) holds the prompt tail
    x[0, 6:10] = 50
    assert policy.step(x, (10, 14), 0).targets.tolist() == list(range(4, 14))  # the clean block rides along
    assert policy.step(x, (10, 14), 1).targets.tolist() == list(range(8, 14))


def test_exact_cache_refuses_bidirectional_models(model):
    with pytest.raises(ValueError, match="needs a block-causal"):
        unmask.generate(model, random_prompt(4, seed=0), cache="exact")
