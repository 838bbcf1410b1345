"""Fast-dLLM threshold and factor rules and the confidence measures: definitions, reductions, batching."""
from __future__ import annotations

import math

import pytest
import torch

import unmask
from conftest import left_pad, random_model, random_prompt
from unmask.decode.confidence import entropy, margin, probability
from unmask.decode.strategies.factor import Factor
from unmask.decode.strategies.threshold import Threshold

NEG = float("-inf")


@pytest.fixture(scope="module")
def model():
    return random_model("diffusion", seed=3)


def test_confidence_measures_by_hand():
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.5, 0.5, 0.0 + 1e-30]]]))  # (1, 2, 3)
    x0 = torch.tensor([[0, 1]])
    assert probability(logits, x0)[0].tolist() == pytest.approx([0.7, 0.5])
    assert margin(logits, x0)[0].tolist() == pytest.approx([0.5, 0.0], abs=1e-6)
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert entropy(logits, x0)[0].tolist() == pytest.approx([math.exp(-h), 0.5])


def test_threshold_commits_every_sure_position_and_at_least_one():
    conf = torch.tensor([[0.95, 0.5, 0.91, NEG], [0.3, 0.2, NEG, NEG], [NEG, NEG, NEG, NEG]], dtype=torch.float64)
    masked = torch.isfinite(conf)
    chosen = Threshold(0.9).select(0, conf, masked)
    assert chosen.tolist() == [[True, False, True, False], [True, False, False, False], [False] * 4]


def test_factor_rule_by_hand():
    # Sorted c = 0.99, 0.9, 0.8, 0.5: (n+1)(1-c_n) = 0.02, 0.3, 0.8, 2.5 -> with f = 1 take n = 3.
    conf = torch.tensor([[0.5, 0.99, 0.8, 0.9], [0.4, NEG, 0.3, NEG]], dtype=torch.float64)
    chosen = Factor(1.0).select(0, conf, torch.isfinite(conf))
    assert chosen.tolist() == [[False, True, True, True], [True, False, False, False]]
    assert Factor(0.25).select(0, conf, torch.isfinite(conf))[0].tolist() == [False, True, False, False]


@pytest.mark.parametrize("G,B", [(16, 8), (24, 8), (12, 12)])
def test_threshold_above_one_is_vanilla_low_confidence(model, G, B):
    prompt = random_prompt(7, seed=G + B, batch=2)
    vanilla = unmask.generate(model, prompt, strategy="low_confidence", max_new_tokens=G, block_size=B,
                              stop_at_eos=False)
    for conf in ("prob", "margin", "entropy"):
        strict = unmask.generate(model, prompt, strategy="threshold", threshold=1.01, confidence=conf,
                                 max_new_tokens=G, block_size=B, stop_at_eos=False)
        assert strict.nfe == G
        if conf == "prob":
            assert torch.equal(strict.token_ids, vanilla.token_ids)


@pytest.mark.parametrize("rule", [{"strategy": "threshold", "threshold": 0.2},
                                  {"strategy": "factor", "factor": 2.0},
                                  {"strategy": "threshold", "threshold": 0.1, "confidence": "margin"},
                                  {"strategy": "low_confidence", "confidence": "entropy"}])
def test_batched_equals_row_by_row(model, rule):
    rows = [random_prompt(n, seed=n)[0] for n in (3, 9, 6)]
    ids, mask = left_pad(rows)
    kw = dict(max_new_tokens=16, block_size=8, stop_at_eos=False, **rule)
    batched = unmask.generate(model, ids, prompt_mask=mask, **kw)
    for i, r in enumerate(rows):
        alone = unmask.generate(model, r[None], **kw)
        assert torch.equal(batched.token_ids[i], alone.token_ids[0]), f"row {i}"


def test_lower_threshold_takes_fewer_forwards_and_fills_everything(model):
    prompt = random_prompt(5, seed=1)
    nfes = []
    for tau in (1.01, 0.5, 0.05):
        out = unmask.generate(model, prompt, strategy="threshold", threshold=tau, max_new_tokens=32,
                              block_size=16, stop_at_eos=False)
        assert bool((out.token_ids != model.mask_token_id).all())
        nfes.append(out.nfe)
    assert nfes[0] == 32 and nfes[0] >= nfes[1] >= nfes[2] and nfes[2] < 32


def test_bad_rule_options_are_refused(model):
    prompt = random_prompt(5, seed=1)
    with pytest.raises(ValueError, match="unknown confidence 'bogus'"):
        unmask.generate(model, prompt, strategy="threshold", confidence="bogus")
    with pytest.raises(ValueError, match="threshold must be above 0"):
        unmask.generate(model, prompt, strategy="threshold", threshold=0)
    with pytest.raises(ValueError, match="factor must be above 0"):
        unmask.generate(model, prompt, strategy="factor", factor=-1)
    with pytest.raises(ValueError, match="does not take confidence"):
        unmask.generate(model, prompt, strategy="random", confidence="prob")
