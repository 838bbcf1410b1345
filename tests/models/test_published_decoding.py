"""Every step rule, confidence measure, cache and early commit decodes loaded published checkpoints.

Runs on the reference folders (LLaDA, LLaDA with grouped-query attention, and Dream, whose logits
score the next position). Their random weights are unsure of everything (top probabilities
~0.03 over 128 tokens), so the rules' parameters here are set to commit several tokens per step
(threshold 0.025, factor 4): the point is that each path runs end to end on a real layout,
fills every mask and, refreshed every step, each cache reproduces the uncached tokens exactly.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import unmask

REFERENCE = Path(__file__).resolve().parent.parent / "data" / "reference"
FOLDERS = ["llada-tiny", "llada-tiny-gqa", "dream-tiny"]
GEN, BLOCK = 24, 8
RULES = {
    "low_confidence": {"strategy": "low_confidence", "steps": 12},  # 2 tokens per step
    "low_confidence-margin": {"strategy": "low_confidence", "steps": 12, "confidence": "margin"},
    "random": {"strategy": "random", "steps": 12, "seed": 3},
    "threshold": {"strategy": "threshold", "threshold": 0.025},
    "threshold-margin": {"strategy": "threshold", "threshold": 0.003, "confidence": "margin"},
    "factor": {"strategy": "factor", "factor": 4.0},
    "factor-entropy": {"strategy": "factor", "factor": 4.0, "confidence": "entropy"},
}
CACHES = ["prefix", "dual", "delayed"]


@pytest.fixture(scope="module", params=FOLDERS)
def model(request):
    return unmask.load_model(REFERENCE / request.param)


def prompt_for(model: torch.nn.Module, batch: int = 2, length: int = 7) -> torch.Tensor:
    """Ordinary token ids `# (batch, length)`: none of the model's own special ids."""
    special = torch.tensor([model.mask_token_id, model.eos_token_id, model.pad_token_id])
    ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    ordinary = torch.tensor([i for i in range(model.config.vocab_size) if i not in special])
    return ordinary[ids % len(ordinary)]


def assert_complete(model: torch.nn.Module, out, batch: int) -> None:
    assert out.token_ids.shape == (batch, GEN)
    assert not (out.token_ids == model.mask_token_id).any()
    assert int(out.token_ids.min()) >= 0 and int(out.token_ids.max()) < model.config.vocab_size


@pytest.mark.parametrize("rule", RULES.values(), ids=RULES.keys())
def test_every_rule_and_cache(model, rule):
    prompt = prompt_for(model)
    kw = dict(max_new_tokens=GEN, block_size=BLOCK, stop_at_eos=False, **rule)
    plain = unmask.generate(model, prompt, **kw)
    assert_complete(model, plain, 2)
    for cache in CACHES:
        assert_complete(model, unmask.generate(model, prompt, cache=cache, **kw), 2)  # default refresh
        exact = unmask.generate(model, prompt, cache=cache, refresh_every=1, **kw)
        assert torch.equal(exact.token_ids, plain.token_ids), cache
        assert exact.nfe == plain.nfe, cache


def test_parallel_rules_commit_several_tokens_per_step(model):
    """The settings above really decode in parallel on these models (else the test above proves little)."""
    prompt = prompt_for(model)
    for name in ("threshold", "factor"):
        out = unmask.generate(model, prompt, max_new_tokens=GEN, block_size=BLOCK, stop_at_eos=False, **RULES[name])
        assert out.nfe < GEN, name


@pytest.mark.parametrize("cache", [None, *CACHES])
def test_early_commit(model, cache):
    prompt = prompt_for(model)
    kw = dict(strategy="threshold", threshold=0.025, max_new_tokens=GEN, block_size=BLOCK, stop_at_eos=False,
              cache=cache)
    assert_complete(model, unmask.generate(model, prompt, early_commit=True, **kw), 2)
    # A zero gap commits everything the first step scored: the whole answer, shifted logits or not.
    at_once = unmask.generate(model, prompt, early_commit=(0.0, 0.0, 0.0), **kw)
    assert_complete(model, at_once, 2)
    assert at_once.nfe == 1


def test_stop_at_eos_cuts_rows(model):
    out = unmask.generate(model, prompt_for(model), strategy="factor", factor=4.0, max_new_tokens=GEN,
                          block_size=BLOCK, cache="dual")
    assert out.token_ids.shape[0] == 2 and out.token_ids.shape[1] <= GEN
    for row, n in zip(out.token_ids, out.lengths):
        assert not (row[:n] == model.eos_token_id).any() and not (row[:n] == model.mask_token_id).any()
