"""Held-out text scoring: --limit scores exactly that many windows, batching does not change the figure, and
the validation split's windows are not the test split's."""
from __future__ import annotations

import pytest

from tests.conftest import random_model
from unmask.data.shakespeare import ShakespeareTask
from unmask.evaluation import evaluate


def test_limit_scores_exactly_that_many_windows_whatever_the_batch() -> None:
    model = random_model("ar")
    whole = evaluate(model, "shakespeare", limit=3, batch_size=3)
    split = evaluate(model, "shakespeare", limit=3, batch_size=2)  # batches of 2 and 1
    assert whole["n"] == split["n"] == 3
    assert abs(whole["loss"] - split["loss"]) < 1e-5
    fewer = evaluate(model, "shakespeare", limit=1, batch_size=32)  # a limit under the batch size: one window
    assert fewer["n"] == 1 and abs(fewer["loss"] - whole["loss"]) > 1e-4


def test_text_validation_windows_never_meet_the_test_windows() -> None:
    test, validation = ShakespeareTask().eval_windows(256, "test"), ShakespeareTask().eval_windows(256, "validation")
    assert test.start == 0 and validation.start == test.stop and len(validation) >= len(test) > 64
    model = random_model("ar")
    on_test = evaluate(model, "shakespeare", limit=2, batch_size=2)
    on_validation = evaluate(model, "shakespeare", limit=2, batch_size=2, split="validation")
    assert on_validation["split"] == "validation" and on_test["split"] == "test"
    assert abs(on_test["loss"] - on_validation["loss"]) > 1e-4  # other windows, another figure


def test_a_limit_beyond_the_split_is_refused() -> None:
    model = random_model("ar")
    n = len(ShakespeareTask().eval_windows(min(256, model.config.max_seq_len), "validation"))
    with pytest.raises(ValueError, match=f"validation split has {n} windows"):
        evaluate(model, "shakespeare", limit=n + 1, split="validation")
