"""The sort task: deterministic examples, a clean held-out split, correctly laid-out training rows."""
from __future__ import annotations

import random

import pytest

from unmask.data import get_task
from unmask.data.sort import SortTask
from unmask.tokenizers import CharTokenizer


@pytest.fixture(scope="module")
def task():
    return SortTask(max_len=6, max_window=24, n_test=200)


def test_examples_are_sorted_answers(task):
    rng = random.Random(1)
    for _ in range(50):
        ex = task.example(rng)
        values = [int(v) for v in ex.prompt.removeprefix("sort: ").split()]
        assert 4 <= len(values) <= 6
        assert ex.answer == " ".join(map(str, sorted(values)))
        assert SortTask.score(ex.answer + " ", ex) and not SortTask.score(ex.answer + " 1", ex)


def test_batches_are_a_pure_function_of_the_seed(task):
    """Same seed, same batch (exact resume and DDP rely on it); another seed, another batch."""
    tok = CharTokenizer()
    a = task.train_batch(tok, 4, "0-3-0", diffusion=True)
    b = task.train_batch(tok, 4, "0-3-0", diffusion=True)
    c = task.train_batch(tok, 4, "0-3-1", diffusion=True)
    assert a.ids.tolist() == b.ids.tolist()
    assert a.ids.tolist() != c.ids.tolist()


def test_training_never_repeats_a_heldout_prompt(task):
    heldout = {e.prompt for e in task.test_examples}
    assert len(task.test_examples) == 200
    for seed in range(5):
        assert not heldout & {e.prompt for e in task.train_examples(f"s{seed}", 100)}


@pytest.mark.parametrize("diffusion", [True, False])
def test_row_layout(task, diffusion):
    """Row = prompt, [SEP], answer, [EOS] (diffusion: then EOS fill), right padding; targets = answer part."""
    tok = CharTokenizer()
    examples = task.train_examples("layout", 8)
    batch = task.batch(tok, examples, "layout", fill=diffusion)
    for row, ex in enumerate(examples):
        ids = batch.ids[row][batch.valid[row]].tolist()
        prompt = tok.encode(ex.prompt) + [tok.sep_token_id]
        answer = tok.encode(ex.answer) + [tok.eos_token_id]
        assert ids[:len(prompt)] == prompt
        assert ids[len(prompt):len(prompt) + len(answer)] == answer
        fill = ids[len(prompt) + len(answer):]
        assert fill == [tok.eos_token_id] * len(fill)
        if not diffusion:
            assert fill == []
        assert len(ids) - len(prompt) <= max(task.max_window, len(answer))
        target = batch.target[row].tolist()
        assert target == [False] * len(prompt) + [True] * (len(ids) - len(prompt)) + [False] * (len(target) - len(ids))
        assert bool((batch.ids[row][~batch.valid[row]] == tok.pad_token_id).all())


def test_a_fill_window_trains_longer_windows_on_the_same_questions(task):
    """fill_window lengthens the EOS fill of training rows; the held-out split and default length stay."""
    tok = CharTokenizer()
    long = SortTask(max_len=6, max_window=24, n_test=200, fill_window=96)
    windows = [int(v.sum()) for v in long.train_batch(tok, 64, "fill", diffusion=True).target]
    assert max(windows) <= 96 and max(windows) > 48  # answers are at most ~18 tokens: the fill reaches far
    assert long.same_questions(task) and long.test_examples == task.test_examples and long.max_window == 24
    assert not SortTask(max_len=7, max_window=24, n_test=200).same_questions(task)
    assert not SortTask(max_len=6, max_window=32, n_test=200).same_questions(task)
    with pytest.raises(ValueError, match="fill_window"):
        SortTask(fill_window=-1)


def test_eval_batches_walk_the_heldout_split(task):
    tok = CharTokenizer()
    b0 = task.eval_batch(tok, 4, 0, diffusion=False)
    b1 = task.eval_batch(tok, 4, 1, diffusion=False)
    assert b0.ids.tolist() != b1.ids.tolist()
    first = tok.encode(task.test_examples[4].prompt)
    assert b1.ids[0, :len(first)].tolist() == first


def test_task_registry():
    assert isinstance(get_task("sort", max_len=5), SortTask)
    with pytest.raises(ValueError, match="known tasks"):
        get_task("poetry")
