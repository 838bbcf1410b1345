"""Held-out text scoring: --limit scores exactly that many windows, and batching does not change the figure."""
from __future__ import annotations

from tests.conftest import random_model
from unmask.evaluation import evaluate


def test_limit_scores_exactly_that_many_windows_whatever_the_batch() -> None:
    model = random_model("ar")
    whole = evaluate(model, "shakespeare", limit=3, batch_size=3)
    split = evaluate(model, "shakespeare", limit=3, batch_size=2)  # batches of 2 and 1
    assert whole["n"] == split["n"] == 3
    assert abs(whole["loss"] - split["loss"]) < 1e-5
    fewer = evaluate(model, "shakespeare", limit=1, batch_size=32)  # a limit under the batch size: one window
    assert fewer["n"] == 1 and abs(fewer["loss"] - whole["loss"]) > 1e-4
