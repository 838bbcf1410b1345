"""Decoding rows driven with fabricated logits: no model runs, so each rule's bookkeeping is pinned exactly.

A row asks for work (which columns to run, which keys to attend), takes the logits of that work and
reports, per step, the tokens that became final. Here the logits are made up so that we know which
positions are confident and which token each proposes.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import EOS, MASK, VOCAB
from unmask.decode.rows import build_row
from unmask.decode.rows.autoregressive import ARRow
from unmask.decode.rows.block_cache import BlockColumns
from unmask.decode.rows.blocks import BlockRow
from unmask.decode.rows.pipeline import PipelineRow
from unmask.decode.rows.strided import StridedRow
from unmask.decode.spec import resolve

ATTENTION = {"diffusion": "bidirectional", "block-diffusion": "block-causal", "ar": "causal"}


def stand_in(kind: str = "diffusion", *, block_size: int | None = None, shift: bool = False, ahead: int = 0):
    """What a row reads of a model: its config and special ids (it never calls it)."""
    cfg = SimpleNamespace(kind=kind, attention=ATTENTION[kind], block_size=block_size, logits_shift=shift,
                          ahead=ahead, max_seq_len=128)
    return SimpleNamespace(config=cfg, mask_token_id=MASK, eos_token_id=EOS)


def row_for(model, prompt: list[int], **options):
    d = resolve(model.config, options)
    return build_row(model, torch.tensor(prompt), d, None)


def logits_for(n: int, picks: dict[int, int]) -> torch.Tensor:
    """`# (n, V)` logits: row r is sure of token picks[r] (p ~ 1); every other row is flat (p = 1/V)."""
    lg = torch.zeros(n, VOCAB)
    for r, tok in picks.items():
        lg[r, tok] = 20.0
    return lg


PROMPT = [10, 11, 12]


# -- BlockRow ---------------------------------------------------------------------------------------

def test_threshold_commits_exactly_the_confident_positions_and_reports_the_committed_prefix():
    model = stand_in()
    row = row_for(model, PROMPT, strategy="threshold", threshold=0.9, max_new_tokens=8, block_size=8)
    assert isinstance(row, BlockRow)
    P, T = len(PROMPT), len(PROMPT) + 8
    w = row.work()
    assert (w.start, w.keys, w.ids.tolist()) == (0, T, PROMPT + [MASK] * 8)  # cache none: everything
    # Answer positions 0, 1 and 3 are confident; 2 is not.
    row.take(logits_for(T, {P + 0: 40, P + 1: 41, P + 3: 43}))
    assert row.x[P:].tolist() == [40, 41, MASK, 43] + [MASK] * 4
    assert row.work() is None  # one pass per step
    prog = row.end_step()
    assert prog.new_tokens == [40, 41] and not prog.finished  # 43 waits for the hole at position 2
    # Next step: position 2 fills, and an EOS lands at 4: the answer ends there, EOS excluded,
    # while the confident token after it is not reported.
    row.take(logits_for(T, {P + 2: 42, P + 4: EOS, P + 5: 45}))
    prog = row.end_step()
    assert prog.new_tokens == [42, 43]
    assert prog.finished and prog.reason == "stop" and row.ended_with_eos
    assert row.work() is None


def test_threshold_commits_the_single_most_confident_when_none_clears_it():
    model = stand_in()
    row = row_for(model, PROMPT, strategy="threshold", threshold=0.9, max_new_tokens=4, block_size=4)
    P, T = len(PROMPT), len(PROMPT) + 4
    lg = torch.zeros(T, VOCAB)
    lg[P + 2, 50] = 3.0  # the surest of all, yet far below 0.9
    lg[P + 1, 51] = 2.0
    row.work()
    row.take(lg)
    assert row.x[P:].tolist() == [MASK, MASK, 50, MASK]
    assert row.end_step().new_tokens == []


def test_length_finish_reports_every_token_and_reason_length():
    model = stand_in()
    row = row_for(model, PROMPT, strategy="threshold", max_new_tokens=4, block_size=2)
    P, T = len(PROMPT), len(PROMPT) + 4
    sure = logits_for(T, {P + i: 60 + i for i in range(4)})
    row.work()
    row.take(sure)
    first = row.end_step()
    assert first.new_tokens == [60, 61] and not first.finished  # block 1 only: block 2 is not scored yet
    row.work()
    row.take(sure)
    last = row.end_step()
    assert last.new_tokens == [62, 63] and last.finished and last.reason == "length"
    assert row.final == [60, 61, 62, 63] and not row.ended_with_eos and row.work() is None


def test_without_stop_at_eos_an_eos_is_an_ordinary_token():
    model = stand_in()
    row = row_for(model, PROMPT, strategy="threshold", max_new_tokens=3, block_size=3, stop_at_eos=False)
    P, T = len(PROMPT), len(PROMPT) + 3
    row.work()
    row.take(logits_for(T, {P: EOS, P + 1: 30, P + 2: 31}))
    prog = row.end_step()
    assert prog.new_tokens == [EOS, 30, 31] and prog.reason == "length"


def test_a_block_row_never_commits_the_mask_token():
    model = stand_in()
    row = row_for(model, PROMPT, strategy="threshold", max_new_tokens=2, block_size=2)
    T = len(PROMPT) + 2
    row.work()
    row.take(logits_for(T, {3: MASK, 4: MASK}))  # the logits love [MASK]: it is never proposed
    answer = row.x[3:].tolist()
    assert answer.count(MASK) == 1  # one position committed (the surest), and not to [MASK]
    assert row.end_step().new_tokens in ([answer[0]], [])


# -- BlockColumns: the columns a step runs, per cache ----------------------------------------------

def x_with(masked_from: int, total: int = 20) -> torch.Tensor:
    x = torch.arange(total) + 10
    x[masked_from:] = MASK
    return x


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_first_step_of_a_block_runs_everything(cache):
    cols = BlockColumns(cache, None, 20, False, None, MASK)
    assert cols.next(x_with(8), (8, 12), 0) == (0, 20, None, 20)


def test_no_cache_runs_everything_every_step():
    cols = BlockColumns("none", None, 20, False, None, MASK)
    for step in range(4):
        assert cols.next(x_with(9), (8, 12), step) == (0, 20, None, 20)


def test_prefix_runs_the_block_and_everything_after_it():
    cols = BlockColumns("prefix", None, 20, False, None, MASK)
    assert cols.next(x_with(9), (8, 12), 1) == (8, 20, None, 20)
    assert cols.next(x_with(10), (8, 12), 2) == (8, 20, None, 20)
    shifted = BlockColumns("prefix", None, 20, True, None, MASK)  # logits for column c come from c-1
    assert shifted.next(x_with(9), (8, 12), 1) == (7, 20, None, 20)


def test_dual_runs_the_block_only():
    cols = BlockColumns("dual", None, 20, False, None, MASK)
    assert cols.next(x_with(9), (8, 12), 1) == (8, 12, None, 20)
    shifted = BlockColumns("dual", None, 20, True, None, MASK)
    assert shifted.next(x_with(9), (8, 12), 1) == (7, 11, None, 20)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_refresh_every_forces_a_full_run_within_a_block(cache):
    cols = BlockColumns(cache, 2, 20, False, None, MASK)
    full = (0, 20, None, 20)
    assert cols.next(x_with(9), (8, 12), 1) != full
    assert cols.next(x_with(10), (8, 12), 2) == full
    assert cols.next(x_with(11), (8, 12), 3) != full
    assert cols.next(x_with(11), (8, 12), 4) == full


def test_delayed_runs_full_every_k_steps_and_otherwise_masked_and_just_decoded_columns():
    cols = BlockColumns("delayed", 3, 12, False, None, MASK)
    x = x_with(6, 12)  # columns 6..11 masked
    assert cols.next(x, (6, 9), 0) == (0, 12, None, 12)  # the first step: full
    x = x.clone()
    x[7] = 77  # step 0 decoded column 7
    s, e, c, keys = cols.next(x, (6, 9), 1)
    assert c.tolist() == [6, 7, 8, 9, 10, 11] and (s, e, keys) == (6, 12, 12)  # 7: decoded since the last step
    x = x.clone()
    x[6] = 66  # step 1 decoded column 6; column 7 has now been seen unmasked and drops out
    s, e, c, keys = cols.next(x, (6, 9), 2)
    assert c.tolist() == [6, 8, 9, 10, 11] and (s, e, keys) == (6, 12, 12)
    assert cols.next(x, (6, 9), 3) == (0, 12, None, 12)  # every 3rd step across the generation: full
    s, e, c, keys = cols.next(x, (9, 12), 0)  # a new block does not reset the count
    assert c.tolist() == [8, 9, 10, 11] and keys == 12


def test_delayed_with_shift_also_runs_the_column_before_each_stale_one():
    cols = BlockColumns("delayed", 8, 12, True, None, MASK)
    x = x_with(12, 12)
    x[5], x[9] = MASK, MASK
    cols.next(x, (5, 10), 0)
    _, _, c, _ = cols.next(x, (5, 10), 1)
    assert c.tolist() == [4, 5, 8, 9]


def test_exact_runs_from_the_committed_column_to_the_end_of_the_model_block():
    cols = BlockColumns("exact", None, 20, False, 4, MASK)  # model blocks of 4
    assert cols.next(x_with(6), (6, 10), 0) == (0, 12, None, 12)  # column 9 sits in model block [8, 12)
    assert cols.next(x_with(7), (6, 10), 1) == (0, 12, None, 12)  # nothing committed before a pass ran
    cols.ran((6, 10))
    assert cols.committed == 4  # model block [4, 8) holds column 6: still being decoded
    assert cols.next(x_with(7), (6, 10), 2) == (4, 12, None, 12)
    cols.ran((10, 14))
    assert cols.committed == 8
    assert cols.next(x_with(10), (10, 14), 0) == (8, 16, None, 16)
    cols.ran((6, 10))  # never moves back
    assert cols.committed == 8
    end = BlockColumns("exact", None, 18, False, 4, MASK)
    assert end.next(x_with(14, 18), (14, 18), 0) == (0, 18, None, 18)  # the last model block is cut at the end


# -- ARRow ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cache", ["exact", "none"])
def test_ar_row_runs_the_newest_token_with_the_exact_cache_and_everything_without(cache):
    model = stand_in("ar")
    row = row_for(model, PROMPT, strategy="ar", cache=cache, max_new_tokens=3, stop_at_eos=False)
    assert isinstance(row, ARRow)
    w = row.work()
    assert (w.ids.tolist(), w.start, w.keys) == (PROMPT, 0, 3)
    row.take(logits_for(3, {2: 70}))  # the last row's argmax is the next token
    assert row.work() is None  # one token per step
    assert row.end_step().new_tokens == [70]
    w = row.work()
    if cache == "exact":
        assert (w.ids.tolist(), w.start, w.keys) == ([70], 3, 4)
        row.take(logits_for(1, {0: 71}))
    else:
        assert (w.ids.tolist(), w.start, w.keys) == (PROMPT + [70], 0, 4)
        row.take(logits_for(4, {3: 71}))
    assert row.end_step().new_tokens == [71]


def test_ar_row_stops_at_eos_and_at_its_budget():
    model = stand_in("ar")
    row = row_for(model, PROMPT, strategy="ar", max_new_tokens=5)
    row.work()
    row.take(logits_for(3, {2: EOS}))
    prog = row.end_step()
    assert prog.new_tokens == [] and prog.finished and prog.reason == "stop" and row.work() is None
    row = row_for(model, PROMPT, strategy="ar", max_new_tokens=1)
    row.work()
    row.take(logits_for(3, {2: 44}))
    prog = row.end_step()
    assert prog.new_tokens == [44] and prog.reason == "length" and row.work() is None


# -- StridedRow (ISD) --------------------------------------------------------------------------------

def isd_row_with_drafts(drafts=(80, 81)):
    """A greedy ISD row (3 slots ahead) after its first pass: one token (79) committed, two drafts made."""
    model = stand_in("ar", ahead=3)
    row = row_for(model, [10, 11, 12, 13], strategy="isd", max_new_tokens=20, stop_at_eos=False)
    assert isinstance(row, StridedRow)
    w = row.work()
    assert w.ids.tolist() == [10, 11, 12, 13, MASK, MASK, MASK] and (w.start, w.keys) == (0, 7)
    assert w.mask.shape == (7, 7) and not w.mask[0, 1] and w.mask[4].all()  # causal prompt, masks see all
    # Row 3 (the last prompt token) predicts 79; slots 1 and 2 (rows 5, 6) draft the two after it.
    row.take(logits_for(7, {3: 79, 5: drafts[0], 6: drafts[1]}))
    assert row.end_step().new_tokens == [79]
    assert row.drafts == list(drafts)
    w = row.work()
    assert w.ids.tolist() == [79, *drafts, MASK, MASK, MASK] and (w.start, w.keys) == (4, 10)
    return row


def test_isd_accepts_drafts_that_equal_the_argmax_and_adds_a_bonus():
    row = isd_row_with_drafts()
    # Rows 0, 1, 2 score the tokens after 79, after 80, after 81.
    row.take(logits_for(6, {0: 80, 1: 81, 2: 82, 4: 90, 5: 91}))
    assert row.end_step().new_tokens == [80, 81, 82]  # both drafts held, plus the bonus
    assert row.drafts == [90, 91]  # the slots after the bonus draft again
    w = row.work()
    assert w.start == 7 and w.ids.tolist()[:3] == [82, 90, 91]


def test_isd_stops_accepting_at_the_first_mismatch_and_commits_the_correction():
    row = isd_row_with_drafts()
    row.take(logits_for(6, {0: 80, 1: 55, 2: 82}))  # draft 81 is not the argmax 55: rejected
    assert row.end_step().new_tokens == [80, 55]
    assert row.drafts == []
    w = row.work()  # 79 and 80 keep their keys; the correction 55 runs next, with fresh slots
    assert w.start == 6 and w.ids.tolist() == [55, MASK, MASK, MASK]


def test_isd_rejects_later_drafts_after_a_mismatch_even_if_they_match():
    row = isd_row_with_drafts()
    row.take(logits_for(6, {0: 56, 1: 81, 2: 82}))  # draft 80 rejected; 81 matching row 1 no longer counts
    assert row.end_step().new_tokens == [56]  # one correction token: every pass commits at least one


# -- PipelineRow (D2F) -------------------------------------------------------------------------------

def test_d2f_adds_a_second_block_once_the_first_passes_add():
    model = stand_in("block-diffusion", block_size=4)
    row = row_for(model, [10, 11, 12, 13], strategy="d2f", threshold=0.9, add=0.5, activate=1.0,
                  max_new_tokens=12, stop_at_eos=False)
    assert isinstance(row, PipelineRow)
    w = row.work()
    assert (w.start, w.keys) == (0, 8)  # the prompt and the first block: [4, 8)
    row.take(logits_for(8, {4: 40, 5: 41}))  # decoded share 0.5: not past add
    assert row.end_step().new_tokens == [40, 41]
    w = row.work()
    assert (w.start, w.keys) == (4, 8)  # the prompt's block is final; still one block in flight
    row.take(logits_for(4, {2: 42}))  # share 0.75 > 0.5: the next block opens
    assert row.end_step().new_tokens == [42]
    w = row.work()
    assert (w.start, w.keys) == (4, 12)  # both blocks in one window
    # Block 2 is not fully active (block 1 never passes activate=1): nothing confident there, nothing commits;
    # block 1, the first unfinished one, commits its surest even below the threshold.
    lg = torch.zeros(8, VOCAB)
    lg[3, 43] = 2.0
    row.take(lg)
    assert row.x[4:12].tolist() == [40, 41, 42, 43] + [MASK] * 4
    assert row.end_step().new_tokens == [43]


def test_d2f_does_not_open_a_block_before_add():
    model = stand_in("block-diffusion", block_size=4)
    row = row_for(model, [10, 11, 12, 13], strategy="d2f", add=0.9, max_new_tokens=8, stop_at_eos=False)
    row.work()
    row.take(logits_for(8, {4: 40, 5: 41, 6: 42}))  # share 0.75, add 0.9
    row.end_step()
    assert row.work().keys == 8


# -- top-k / top-p for every decoder that samples ------------------------------------------------------

def test_filter_logits_keeps_the_top_k_and_the_nucleus():
    from unmask.decode.sampling import filter_logits

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, 2, None)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, None, 0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, None, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, None, 1.0)).all()


@pytest.mark.parametrize("kind, options", [
    ("diffusion", dict(strategy="threshold", cache="dual", block_size=8)),
    ("diffusion", dict(strategy="low_confidence", block_size=4)),
    ("block-diffusion", dict(strategy="d2f")),
    ("ar", dict(strategy="isd")),
    ("ar", dict(strategy="ar")),
])
@pytest.mark.parametrize("filt", [dict(top_k=1), dict(top_p=1e-6)])
def test_sampling_restricted_to_one_token_is_greedy_decoding(kind, options, filt):
    """With top_k=1 (or a nucleus of one token) sampling at any temperature must give the greedy tokens."""
    import unmask
    from conftest import random_model, random_prompt

    model = random_model(kind, seed=11, std=0.5, **({"ahead": 3} if options["strategy"] == "isd" else {}))
    prompt = random_prompt(5, seed=3)
    greedy = unmask.generate(model, prompt, max_new_tokens=12, stop_at_eos=False, **options)
    sampled = unmask.generate(model, prompt, max_new_tokens=12, stop_at_eos=False, temperature=1.5, seed=7,
                              **options, **filt)
    loose = unmask.generate(model, prompt, max_new_tokens=12, stop_at_eos=False, temperature=1.5, seed=7,
                            **options)
    assert sampled.token_ids.tolist() == greedy.token_ids.tolist()
    assert loose.token_ids.tolist() != greedy.token_ids.tolist()  # the filter, not the seed, made it greedy
