"""Held-out text scoring: --limit scores exactly that many windows, batching does not change the figure (the
bounds' draws are seeded by window), --draws averages independent draws with a standard error, and the
validation split's windows are not the test split's."""
from __future__ import annotations

import math
import statistics

import pytest

from tests.conftest import random_flow, random_model
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


@pytest.mark.parametrize("kind", ["diffusion", "continuous"])
def test_a_bound_does_not_depend_on_the_batch_size(kind: str) -> None:
    """Each window draws its own masks / noise, so batches of 3, of 2 + 1 and of 1 give one figure."""
    model = random_flow() if kind == "continuous" else random_model(kind)
    extra = {"ode_steps": 4} if kind == "continuous" else {}
    figures = [evaluate(model, "shakespeare", limit=3, batch_size=b, **extra)["loss"] for b in (3, 2, 1)]
    assert max(figures) - min(figures) < 1e-5


@pytest.mark.parametrize("kind", ["diffusion", "continuous"])
def test_draws_average_independent_estimates_with_a_standard_error(kind: str) -> None:
    model = random_flow() if kind == "continuous" else random_model(kind)
    extra = {"ode_steps": 4} if kind == "continuous" else {}
    one = evaluate(model, "shakespeare", limit=2, batch_size=2, **extra)
    three = evaluate(model, "shakespeare", limit=2, batch_size=2, draws=3, **extra)
    assert one["draws"] == 1 and "loss_stderr" not in one  # one draw has no spread to measure
    assert three["draws"] == 3 and three["loss_stderr"] > 0
    assert three["draw_losses"][0] == pytest.approx(one["loss"], abs=1e-9)  # draw 0 whatever the count
    assert three["loss"] == pytest.approx(sum(three["draw_losses"]) / 3, abs=1e-12)
    spread = statistics.stdev(three["draw_losses"]) / math.sqrt(3)
    assert three["loss_stderr"] == pytest.approx(spread, rel=1e-9)
    two = evaluate(model, "shakespeare", limit=2, batch_size=1, draws=2, **extra)  # other batches, same draws
    assert two["draw_losses"] == pytest.approx(three["draw_losses"][:2], abs=1e-5)


def test_draws_are_refused_where_nothing_is_drawn() -> None:
    with pytest.raises(ValueError, match="AR model's likelihood is exact"):
        evaluate(random_model("ar"), "shakespeare", limit=1, draws=2)
    with pytest.raises(ValueError, match="draws must be at least 1"):
        evaluate(random_model("diffusion"), "shakespeare", limit=1, draws=0)
