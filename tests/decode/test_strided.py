"""Introspective strided decoding: greedy output is exactly the same model's AR greedy output."""
from __future__ import annotations

import pytest
import torch

import unmask
from conftest import EOS, MASK, left_pad, random_model, random_prompt
from unmask.decode.rows.strided import pass_mask, verify


def isd_model(seed: int = 0, ahead: int = 4, **kw):
    return random_model("ar", seed=seed, ahead=ahead, **kw)


def test_pass_mask_layout():
    m = pass_mask(2, 3, 2).int().tolist()  # 2 cached keys, 3 causal tokens, 2 mask slots
    assert m == [[1, 1, 1, 0, 0, 0, 0],
                 [1, 1, 1, 1, 0, 0, 0],
                 [1, 1, 1, 1, 1, 0, 0],
                 [1, 1, 1, 1, 1, 1, 1],
                 [1, 1, 1, 1, 1, 1, 1]]


def test_greedy_verify_accepts_the_agreeing_prefix_and_adds_the_models_next_token():
    causal = torch.full((4, 10), -5.0)
    for row, tok in enumerate([7, 8, 2, 3]):  # the model's own greedy choices
        causal[row, tok] = 5.0
    assert verify(causal, [7, 8, 9], [], 0.0, None) == (2, 2)  # 9 != 2: correction 2
    assert verify(causal, [7, 8, 2], [], 0.0, None) == (3, 3)  # all held: bonus 3
    assert verify(causal[:1], [], [], 0.0, None) == (0, 7)


@pytest.mark.parametrize("seed", range(6))
def test_isd_greedy_equals_ar_greedy(seed):
    model = isd_model(seed=seed % 3, std=0.3 + 0.1 * (seed % 2))
    prompt = random_prompt(3 + seed, seed=seed)
    ar = unmask.generate(model, prompt, strategy="ar", max_new_tokens=40, stop_at_eos=False)
    isd = unmask.generate(model, prompt, strategy="isd", max_new_tokens=40, stop_at_eos=False)
    assert isd.token_ids.tolist() == ar.token_ids.tolist()
    assert isd.nfe <= ar.nfe


def test_isd_takes_fewer_passes_when_drafts_agree():
    """A model whose every position (causal or slot) predicts the same token: all drafts hold."""
    model = isd_model(seed=1)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.weight[42, 0] = 1.0  # only token 42 reads hidden dimension 0 ...
        model.norm.weight.fill_(1.0)
        model.embed.weight[:, 0] = 5.0  # ... which every input makes large: 42 wins everywhere
    prompt = random_prompt(4, seed=0)
    isd = unmask.generate(model, prompt, strategy="isd", max_new_tokens=32, stop_at_eos=False)
    ar = unmask.generate(model, prompt, strategy="ar", max_new_tokens=32, stop_at_eos=False)
    assert isd.token_ids.tolist() == ar.token_ids.tolist() == [[42] * 32]
    assert isd.nfe <= 32 // 4 + 1 < ar.nfe


def test_isd_respects_eos_and_batches():
    model = isd_model(seed=2)
    rows = [random_prompt(n, seed=n)[0] for n in (3, 7, 5)]
    ids, mask = left_pad(rows)
    batched = unmask.generate(model, ids, prompt_mask=mask, strategy="isd", max_new_tokens=24)
    for i, r in enumerate(rows):
        ar = unmask.generate(model, r[None], strategy="ar", max_new_tokens=24)
        assert batched.token_ids[i, :batched.lengths[i]].tolist() == ar.token_ids[0, :ar.lengths[0]].tolist()
        assert batched.finished[i] == ar.finished[0]
        assert EOS not in batched.token_ids[i].tolist() and MASK not in batched.token_ids[i].tolist()


def test_isd_sampling_is_seeded_and_fills_the_budget():
    model = isd_model(seed=3)
    prompt = random_prompt(4, seed=1)
    a = unmask.generate(model, prompt, strategy="isd", max_new_tokens=20, temperature=1.0, seed=5, stop_at_eos=False)
    b = unmask.generate(model, prompt, strategy="isd", max_new_tokens=20, temperature=1.0, seed=5, stop_at_eos=False)
    assert a.token_ids.tolist() == b.token_ids.tolist() and a.token_ids.shape == (1, 20)


def test_isd_needs_a_model_trained_to_draft():
    with pytest.raises(ValueError, match="trained to propose ahead"):
        unmask.generate(random_model("ar", seed=0), random_prompt(3, seed=0), strategy="isd")
    with pytest.raises(ValueError, match="needs an autoregressive model"):
        unmask.generate(random_model("diffusion", seed=0), random_prompt(3, seed=0), strategy="isd")
