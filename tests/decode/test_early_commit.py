"""Prophet early commit: the stage thresholds, no mask ever left behind, fewer forwards, per-row decisions."""
from __future__ import annotations

import pytest
import torch

import unmask
from conftest import MASK, left_pad, random_model, random_prompt
from unmask.decode.early_commit import EarlyCommit


def gap_logits(gaps: list[float]) -> torch.Tensor:
    """Logits `# (1, W, 4)` whose top-1 minus top-2 gap at position i is gaps[i]."""
    return torch.tensor([[[g, 0.0, -1.0, -2.0] for g in gaps]])


@pytest.mark.parametrize("progress,gap,fires", [(0.0, 7.4, False), (0.0, 7.5, True), (0.4, 5.0, True),
                                                (0.4, 4.9, False), (0.7, 2.5, True), (0.99, 2.4, False)])
def test_stage_thresholds(progress, gap, fires):
    rule = EarlyCommit()
    out = rule.fires(gap_logits([gap, gap]), torch.ones(1, 2, dtype=torch.bool), torch.tensor([progress]))
    assert out.tolist() == [fires]


def test_gap_is_averaged_over_masked_positions_only():
    rule = EarlyCommit()
    logits = gap_logits([10.0, 1.0, 9.0])
    masked = torch.tensor([[True, False, True]])
    assert rule.fires(logits, masked, torch.tensor([0.0])).tolist() == [True]  # mean(10, 9) >= 7.5
    assert rule.fires(logits, torch.ones(1, 3, dtype=torch.bool), torch.tensor([0.0])).tolist() == [False]
    assert rule.fires(logits, torch.zeros(1, 3, dtype=torch.bool), torch.tensor([0.0])).tolist() == [False]


def test_min_pooling_needs_every_masked_position_to_clear_the_gap():
    rule = EarlyCommit((5.0,), pool="min")
    assert rule.gaps.tolist() == [5.0, 5.0, 5.0]  # one gap for every stage
    logits = gap_logits([30.0, 4.9, 6.0])
    assert EarlyCommit((5.0,)).fires(logits, torch.ones(1, 3, dtype=torch.bool), torch.tensor([0.0])).tolist() == [True]
    assert rule.fires(logits, torch.ones(1, 3, dtype=torch.bool), torch.tensor([0.0])).tolist() == [False]
    decoded_doubt = torch.tensor([[True, False, True]])  # the unsure position is already decoded
    assert rule.fires(logits, decoded_doubt, torch.tensor([0.0])).tolist() == [True]
    assert rule.fires(logits, torch.zeros(1, 3, dtype=torch.bool), torch.tensor([0.0])).tolist() == [False]
    with pytest.raises(ValueError, match="pooling"):
        EarlyCommit(pool="median")


def test_min_pooling_fires_no_earlier_than_mean_pooling():
    model = sure_model()
    prompt = random_prompt(6, seed=3, batch=3)
    kw = dict(strategy="low_confidence", max_new_tokens=32, block_size=32, stop_at_eos=False, early_commit=(3.0,))
    mean = unmask.generate(model, prompt, **kw)
    strict = unmask.generate(model, prompt, early_commit_pool="min", **kw)
    plain = unmask.generate(model, prompt, **{k: v for k, v in kw.items() if k != "early_commit"})
    assert not bool((strict.token_ids == MASK).any())
    assert mean.nfe <= strict.nfe <= plain.nfe
    with pytest.raises(ValueError, match="set early_commit too"):
        unmask.generate(model, prompt, early_commit_pool="min")


def sure_model(seed: int = 4):
    """A random model with a large weight scale: logit gaps are wide, so early commit fires."""
    return random_model("diffusion", seed=seed, std=0.6)


def test_published_gaps_are_the_default():
    assert EarlyCommit().gaps.tolist() == [7.5, 5.0, 2.5]
    with pytest.raises(ValueError, match="one gap or three stage thresholds"):
        unmask.generate(sure_model(), random_prompt(4, seed=0), early_commit=(1.0, 2.0))


@pytest.mark.parametrize("cache", [None, "prefix", "dual", "delayed"])
@pytest.mark.parametrize("strategy", ["low_confidence", "threshold"])
def test_early_commit_never_leaves_a_mask_and_saves_forwards(cache, strategy):
    model = sure_model()
    prompt = random_prompt(6, seed=3, batch=3)
    kw = dict(strategy=strategy, max_new_tokens=32, block_size=8, stop_at_eos=False, cache=cache)
    base = unmask.generate(model, prompt, **kw)
    fast = unmask.generate(model, prompt, early_commit=(3.0, 2.0, 1.0), **kw)
    assert not bool((fast.token_ids == MASK).any())
    assert fast.token_ids.shape == base.token_ids.shape
    assert fast.nfe < base.nfe


def test_early_commit_decides_per_row():
    model = sure_model()
    rows = [random_prompt(n, seed=20 + n)[0] for n in (4, 8, 6)]
    ids, mask = left_pad(rows)
    kw = dict(strategy="threshold", threshold=0.5, max_new_tokens=24, block_size=8, stop_at_eos=False,
              early_commit=(3.0, 2.0, 1.0))
    batched = unmask.generate(model, ids, prompt_mask=mask, **kw)
    for i, r in enumerate(rows):
        assert torch.equal(batched.token_ids[i], unmask.generate(model, r[None], **kw).token_ids[0])
