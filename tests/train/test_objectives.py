"""Training losses on hand-made batches, checked against values computed by hand."""
from __future__ import annotations

import dataclasses
import math

import pytest

import torch
import torch.nn as nn
import torch.nn.functional as F

from unmask.data.batch import Batch, make_batch
from unmask.data.sort import SortTask
from unmask.tokenizers import CharTokenizer
from unmask.train.objectives import ar_loss, mask_tokens, mdm_elbo, mdm_elbo_rows, mdm_loss
from unmask.train.recipes import get_recipe

MASK = 1


class FixedLogits(nn.Module):
    """A stub model: ignores its input and returns the same logits `# (B, L, V)` every call."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.seen: list[torch.Tensor] = []

    def forward(self, ids, valid=None):
        self.seen.append(ids.clone())
        return self.logits


def hand_batch() -> Batch:
    # row 0: prompt [5, 6], answer [7, 8, 9]; row 1: prompt [5], answer [4], then padding.
    return make_batch([[5, 6, 7, 8, 9], [5, 4]], [2, 1], pad_id=0)


def ce(logits_row: torch.Tensor, target: int) -> float:
    """Cross-entropy of one position, computed by hand."""
    return -logits_row[target].item() + math.log(sum(math.exp(v) for v in logits_row.tolist()))


def test_make_batch_marks_answers_as_targets():
    """Only answer tokens are scored/masked; prompts and padding never are."""
    b = hand_batch()
    assert b.ids.tolist() == [[5, 6, 7, 8, 9], [5, 4, 0, 0, 0]]
    assert b.target.tolist() == [[False, False, True, True, True], [False, True, False, False, False]]
    assert b.valid.tolist() == [[True] * 5, [True, True, False, False, False]]
    assert b.n_tokens == 7


def test_mdm_loss_matches_hand_computation():
    """mdm_loss = sum over masked targets of CE / t, divided by the number of target tokens."""
    torch.manual_seed(0)
    batch = hand_batch()
    logits = torch.randn(2, 5, 12)
    t = torch.tensor([[0.5], [0.8]])
    # Replay the generator to learn which targets get masked.
    _, masked = mask_tokens(batch, MASK, t, torch.Generator().manual_seed(1))
    assert 0 < int(masked.sum()) < 4, "a seed that masks some targets but not all"
    model = FixedLogits(logits)
    loss = mdm_loss(model, batch, MASK, t=t, generator=torch.Generator().manual_seed(1))
    expected = 0.0
    for b in range(2):
        for i in range(5):
            if masked[b, i]:
                expected += ce(logits[b, i], int(batch.ids[b, i])) / t[b, 0].item()
    expected /= 4  # target tokens: 3 + 1
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    # The model saw mask ids exactly at the masked positions and the clean ids elsewhere.
    noisy = model.seen[0]
    assert torch.equal(noisy == MASK, masked)
    assert torch.equal(noisy[~masked], batch.ids[~masked])


def test_a_shifted_model_scores_each_target_from_the_column_before():
    """An AR model adapted into a diffusion one (Dream: `logits_shift`) keeps its next-token head: a
    masked target at i is scored by the logits at i - 1."""
    batch = hand_batch()
    logits = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(2))
    model = FixedLogits(logits)
    model.config = type("Config", (), {"logits_shift": True})()
    loss = mdm_loss(model, batch, MASK, t=torch.ones(2, 1))
    expected = (ce(logits[0, 1], 7) + ce(logits[0, 2], 8) + ce(logits[0, 3], 9) + ce(logits[1, 0], 4)) / 4
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


def test_mdm_loss_with_everything_masked():
    """At t=1 every target is masked and the loss is the mean CE over targets."""
    batch = hand_batch()
    logits = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(1))
    loss = mdm_loss(FixedLogits(logits), batch, MASK, t=torch.ones(2, 1))
    targets = [(0, 2), (0, 3), (0, 4), (1, 1)]
    expected = sum(ce(logits[b, i], int(batch.ids[b, i])) for b, i in targets) / 4
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


def test_ar_loss_is_next_token_ce_on_targets_only():
    """Position i predicts token i+1, scored only where token i+1 is a target (prompt/pad ignored)."""
    batch = hand_batch()
    logits = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(2))
    loss = ar_loss(FixedLogits(logits), batch)
    # targets at (0,2),(0,3),(0,4),(1,1): predicted from the position before each.
    pairs = [(0, 1, 7), (0, 2, 8), (0, 3, 9), (1, 0, 4)]
    expected = sum(ce(logits[b, i], tok) for b, i, tok in pairs) / len(pairs)
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


def test_mask_tokens_at_t1_masks_all_targets_and_nothing_else():
    """Masking never touches the prompt or padding, over many seeds and sort batches."""
    tok, task = CharTokenizer(), SortTask(max_len=6, max_window=24)
    for seed in range(8):
        batch = task.train_batch(tok, 4, f"prop-{seed}", diffusion=True)
        noisy, masked = mask_tokens(batch, tok.mask_token_id, torch.ones(4, 1), torch.Generator().manual_seed(seed))
        assert torch.equal(masked, batch.target)
        assert torch.equal(noisy[~batch.target], batch.ids[~batch.target])
        assert bool((noisy[batch.target] == tok.mask_token_id).all())
        assert not bool((batch.target & ~batch.valid).any())
        # Prompt = everything up to and including [SEP]; none of it is a target.
        for row in range(4):
            sep = batch.ids[row].tolist().index(tok.sep_token_id)
            assert not bool(batch.target[row, :sep + 1].any())
            assert bool(batch.target[row, sep + 1]), "the first answer token is a target"


def test_mask_tokens_partial_t_only_masks_targets():
    """At 0 < t < 1 masked positions are a subset of the targets, roughly a t fraction of them."""
    tok, task = CharTokenizer(), SortTask(max_len=6, max_window=24)
    total = hits = 0
    for seed in range(8):
        batch = task.train_batch(tok, 4, f"part-{seed}", diffusion=True)
        _, masked = mask_tokens(batch, tok.mask_token_id, torch.full((4, 1), 0.3), torch.Generator().manual_seed(seed))
        assert not bool((masked & ~batch.target).any())
        total, hits = total + int(batch.target.sum()), hits + int(masked.sum())
    assert 0.2 < hits / total < 0.4


def test_mdm_elbo_is_deterministic():
    """The held-out diffusion bound is a pure function of (model, batch, seed)."""
    batch = hand_batch()
    model = FixedLogits(torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(4)))
    assert mdm_elbo(model, batch, MASK, seed=1) == mdm_elbo(model, batch, MASK, seed=1)


def test_low_discrepancy_noise_levels_cover_every_stratum():
    """Each row's t falls in its own 1/B stratum (after the shared offset), so a batch never bunches."""
    from unmask.train.objectives import low_discrepancy_uniform
    t = low_discrepancy_uniform(8, torch.Generator().manual_seed(0)).squeeze(1)
    assert t.shape == (8,) and bool(((t >= 0) & (t < 1)).all())
    strata = sorted(int(v * 8) for v in t)
    assert strata == list(range(8))


def test_ahead_slots_see_only_the_prefix_up_to_the_cut():
    from unmask.train.objectives import ahead_attention
    valid = torch.tensor([[True, True, True, True, False]])
    m = ahead_attention(valid, torch.tensor([1]), 2)[0, 0]  # (7, 7)
    assert m[:5, 5:].sum() == 0  # the sequence never sees the slots
    assert m[2, :3].all() and not m[2, 3]  # causal
    assert m[5].tolist() == [True, True, False, False, False, True, True]  # slot: prefix up to the cut + slots


def test_isd_loss_is_ar_loss_plus_the_slots_cross_entropy():
    from unmask.train.objectives import isd_loss
    from unmask.data.batch import make_batch
    torch.manual_seed(0)
    batch = make_batch([[5, 6, 7, 8, 9, 10]], [2], pad_id=0)
    V = 12

    class Uniform(torch.nn.Module):
        def forward(self, ids, positions=None, attn_mask=None, **kw):
            return torch.zeros(ids.shape[0], ids.shape[1], V)

    loss = isd_loss(Uniform(), batch, mask_id=1, ahead=3, generator=torch.Generator().manual_seed(0))
    assert float(loss) == pytest.approx(2 * math.log(V))  # uniform logits: log V for each part


def test_block_diffusion_loss_in_one_pass_equals_block_by_block():
    """[x_t, x_0] with the BD3-LM mask gives each noisy block the logits it gets when decoded after the
    clean earlier blocks with plain block-causal attention."""
    from conftest import random_model
    from unmask.train.objectives import bd_loss

    model = random_model("block-diffusion", seed=3)  # block size 4
    batch = make_batch([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29]], [3, 2],
                       pad_id=0)
    batch.valid[1, 9] = False  # a padded tail
    batch.target[1, 9] = False
    with torch.no_grad():
        one_pass = bd_loss(model, batch, 1, 4, generator=torch.Generator().manual_seed(0))
    # Recompute with the same draws, block by block.
    g = torch.Generator().manual_seed(0)
    B, L = batch.ids.shape
    t = (0.3 + 0.5 * torch.rand(B, 3, generator=g)).repeat_interleave(4, dim=1)[:, :L]
    masked = (torch.rand(B, L, generator=g) < t) & batch.target
    total = 0.0
    for b in range(3):
        s, e = 4 * b, min(4 * b + 4, L)
        x = batch.ids.clone()
        x[:, s:e] = torch.where(masked[:, s:e], 1, batch.ids[:, s:e])
        with torch.no_grad():
            logits = model(x[:, :e], valid=batch.valid[:, :e])[:, s:e]  # block-causal: later blocks unseen
        m = masked[:, s:e]
        total += float((F.cross_entropy(logits[m], batch.ids[:, s:e][m], reduction="none") / t[:, s:e][m]).sum())
    assert float(one_pass) == pytest.approx(total / int(batch.target.sum()), rel=1e-4)


def test_only_the_mdm_objective_takes_shifted_logits():
    """The other objectives read each column as its own token's scores: a shifted model is refused by name."""
    import dataclasses

    from unmask.train.recipes import get_recipe

    recipe = get_recipe("arith-mdm")
    assert recipe.model.logits_shift and recipe.objective == "mdm"
    for objective in ("bd", "d2f", "trace-grpo"):
        with pytest.raises(ValueError, match=f"logits_shift .* objective 'mdm' only, not '{objective}'"):
            dataclasses.replace(recipe, objective=objective)


def test_a_raised_mask_eps_masks_nearly_every_answer_token():
    """mask_eps 0.9 (sort-mdm-fast) draws t in [0.9, 1): every row of 60 answer tokens is mostly masked,
    where the default draws the whole range."""
    batch = make_batch([[5] * 4 + [7] * 60] * 16, [4] * 16, pad_id=0)
    logits = torch.zeros(16, 64, 12)

    def masked_shares(eps: float) -> list[float]:
        stub = FixedLogits(logits)
        mdm_loss(stub, batch, MASK, eps=eps, generator=torch.Generator().manual_seed(0))
        return (stub.seen[0] == MASK).sum(1).div(60).tolist()

    assert min(masked_shares(0.9)) >= 0.75
    assert min(masked_shares(1e-3)) < 0.25 and max(masked_shares(1e-3)) > 0.75


def test_mask_eps_outside_0_1_or_under_a_curriculum_is_refused():
    cfg = get_recipe("tiny-sort-mdm")
    for eps in (0.0, 1.0):
        with pytest.raises(ValueError, match="mask_eps"):
            dataclasses.replace(cfg, mask_eps=eps)
    with pytest.raises(ValueError, match="curriculum"):
        dataclasses.replace(cfg, mask_eps=0.5, curriculum_steps=10, curriculum_start=0.4)


def test_per_row_elbo_estimates_each_rows_mean_answer_cross_entropy():
    """With logits that ignore the input, a masked token costs its fixed CE and is masked with probability t, so
    E[CE / t over masked] is the mean CE over the row's answer: the per-row bound's expectation, by hand. Each row
    draws from its own seed, so it gets the same figure alone or beside another row, and prompts stay unmasked."""
    batch = hand_batch()
    logits = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(4))
    by_hand = [sum(ce(logits[0, p], t) for p, t in ((2, 7), (3, 8), (4, 9))) / 3, ce(logits[1, 1], 4)]
    model = FixedLogits(logits)
    draws = torch.stack([mdm_elbo_rows(model, batch, MASK, [s, 1000 + s]) for s in range(300)])  # (300, 2)
    assert draws.mean(0).tolist() == pytest.approx(by_hand, rel=0.05)
    assert not any(bool(((seen == MASK) & ~batch.target).any()) for seen in model.seen)  # only answers masked
    row1 = Batch(*(getattr(batch, f.name)[1:] for f in dataclasses.fields(Batch)))
    alone = mdm_elbo_rows(FixedLogits(logits[1:]), row1, MASK, [1007])
    assert float(alone[0]) == pytest.approx(float(draws[7, 1]), abs=1e-12)
