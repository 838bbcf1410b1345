"""unmask.loglikelihood: exact for AR (the chain rule holds), LLaDA's Monte Carlo estimate for diffusion."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import unmask
from conftest import random_model
from unmask.likelihood import mask_draws


def test_ar_loglikelihood_obeys_the_chain_rule():
    model = random_model("ar", seed=2)
    ctx, a, b = [5, 9, 11], [7, 8], [20, 6, 4]
    whole = unmask.loglikelihood(model, ctx, a + b)
    assert whole == pytest.approx(unmask.loglikelihood(model, ctx, a) + unmask.loglikelihood(model, ctx + a, b),
                                  abs=1e-4)
    assert whole < 0


def test_diffusion_with_one_token_is_its_exact_masked_log_probability():
    """With one continuation token every draw masks just it (share 1): the estimate is exact, by hand."""
    model = random_model("diffusion", seed=3)
    ctx, tok = [5, 9, 11, 7], 12
    with torch.no_grad():
        logits = model(torch.tensor([ctx + [model.mask_token_id]]))[0, -1]
    expected = float(F.log_softmax(logits.float(), -1)[tok])
    assert unmask.loglikelihood(model, ctx, [tok], mc_num=8, batch_size=4) == pytest.approx(expected, abs=1e-5)


def test_diffusion_estimate_is_reproducible_by_seed_and_validated():
    model = random_model("diffusion", seed=3)
    a = unmask.loglikelihood(model, [5, 9], [7, 8, 20, 6], mc_num=16, batch_size=8, seed=1)
    assert a == unmask.loglikelihood(model, [5, 9], [7, 8, 20, 6], mc_num=16, batch_size=8, seed=1)
    assert a != unmask.loglikelihood(model, [5, 9], [7, 8, 20, 6], mc_num=16, batch_size=8, seed=2)
    with pytest.raises(ValueError, match="multiple of batch_size"):
        unmask.loglikelihood(model, [5], [7], mc_num=10, batch_size=4)
    with pytest.raises(ValueError, match="empty"):
        unmask.loglikelihood(model, [5], [])


def test_mask_draws_are_stratified_over_1_to_L():
    masked, share = mask_draws(8, 10, torch.Generator().manual_seed(0))
    counts = masked.sum(1)
    assert ((counts >= 1) & (counts <= 10)).all()
    assert torch.equal(share, counts.float() / 10)
    assert len(set(counts.tolist())) >= 6  # spread over the range, not 8 draws of one level


@pytest.mark.parametrize("name", ["sort-ar", "sort-mdm"])
def test_a_trained_model_prefers_the_sorted_answer(name):
    model = unmask.load_model(name)
    tok = model.tokenizer
    ctx = tok.encode("sort: 31 7 18 2 64") + [tok.sep_token_id]  # 4 to 24 numbers: what it was trained on
    right = unmask.loglikelihood(model, ctx, tok.encode("2 7 18 31 64") + [tok.eos_token_id], mc_num=64)
    wrong = unmask.loglikelihood(model, ctx, tok.encode("64 31 18 7 2") + [tok.eos_token_id], mc_num=64)
    assert math.isfinite(right) and right > wrong
