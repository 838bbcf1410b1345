"""AR decoding: the KV-cache path equals the no-cache path; batching and sampling behave."""
from __future__ import annotations

import pytest
import torch

import unmask
from conftest import left_pad, random_model, random_prompt


@pytest.fixture(scope="module")
def model():
    return random_model("ar", seed=2)


@torch.no_grad()
def greedy_reference(model, prompt: torch.Tensor, n: int) -> list[int]:
    """Greedy decoding by re-running the full forward each step (no cache, no batching)."""
    seq = prompt[None]
    for _ in range(n):
        nxt = model(seq)[0, -1].argmax()
        seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
    return seq[0, len(prompt):].tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cache_equals_no_cache_greedy(model, seed):
    """Greedy tokens with the KV cache equal those without it, and a plain re-forward reference."""
    prompt = random_prompt(3 + seed * 2, seed=seed, batch=2)
    kw = dict(strategy="ar", max_new_tokens=12, stop_at_eos=False)
    cached = unmask.generate(model, prompt, **kw)
    plain = unmask.generate(model, prompt, cache="none", **kw)
    assert cached.token_ids.tolist() == plain.token_ids.tolist()
    assert cached.nfe == plain.nfe == 12
    for row in range(2):
        assert cached.token_ids[row].tolist() == greedy_reference(model, prompt[row], 12)


def test_cache_equals_no_cache_with_left_padding(model):
    """Left-padded batches decode the same with and without cache, and as each prompt alone."""
    rows = [random_prompt(n, seed=10 + n)[0] for n in (2, 6, 4)]
    ids, mask = left_pad(rows)
    kw = dict(strategy="ar", max_new_tokens=10, stop_at_eos=False, prompt_mask=mask)
    cached = unmask.generate(model, ids, **kw)
    plain = unmask.generate(model, ids, cache="none", **kw)
    assert cached.token_ids.tolist() == plain.token_ids.tolist()
    for i, r in enumerate(rows):
        assert cached.token_ids[i].tolist() == greedy_reference(model, r, 10), f"row {i}"


def test_sampling_cache_equals_no_cache_with_seed(model):
    """With a seed, top-k/top-p sampling gives the same tokens with and without the cache."""
    prompt = random_prompt(4, seed=7, batch=2)
    kw = dict(strategy="ar", max_new_tokens=8, temperature=0.8, top_k=20, top_p=0.9, seed=5, stop_at_eos=False)
    a = unmask.generate(model, prompt, **kw)
    b = unmask.generate(model, prompt, cache="none", **kw)
    assert a.token_ids.tolist() == b.token_ids.tolist()


def test_top_k_one_is_greedy(model):
    """top_k=1 sampling can only pick the argmax."""
    prompt = random_prompt(4, seed=8)
    greedy = unmask.generate(model, prompt, strategy="ar", max_new_tokens=6, stop_at_eos=False)
    sampled = unmask.generate(model, prompt, strategy="ar", max_new_tokens=6, temperature=1.5, top_k=1, seed=3,
                              stop_at_eos=False)
    assert sampled.token_ids.tolist() == greedy.token_ids.tolist()


def test_default_strategy_and_kind_checks(model):
    """An AR model defaults to 'ar'; diffusion strategies on it (and 'ar' on diffusion) are refused."""
    prompt = random_prompt(3, seed=0)
    out = unmask.generate(model, prompt, max_new_tokens=4, stop_at_eos=False)
    assert out.nfe == 4
    with pytest.raises(ValueError, match="autoregressive"):
        unmask.generate(model, prompt, strategy="low_confidence")
    with pytest.raises(ValueError, match="needs an autoregressive model"):
        unmask.generate(random_model("diffusion"), prompt, strategy="ar")
    with pytest.raises(ValueError, match="unknown option 'block_size_typo'"):
        unmask.generate(model, prompt, strategy="ar", block_size_typo=3)
    with pytest.raises(ValueError, match="strategy 'ar' does not take block_size"):
        unmask.generate(model, prompt, strategy="ar", block_size=3)


def test_request_checks(model):
    """Empty prompts, non-positive lengths and over-long requests fail with a ValueError."""
    with pytest.raises(ValueError, match="empty"):
        unmask.generate(model, torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 1"):
        unmask.generate(model, random_prompt(3, seed=0), max_new_tokens=0)
    with pytest.raises(ValueError, match="context"):
        unmask.generate(model, random_prompt(120, seed=0), max_new_tokens=10)  # max_seq_len 128
