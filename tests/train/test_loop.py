"""The training loop: exact resume, metrics log, checkpoints, learning-rate schedule."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import unmask
from unmask.train.loop import LOG_FILE, STATE_FILE, lr_at, train
from unmask.train.recipes import RECIPES, get_recipe


def read_log(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / LOG_FILE).read_text().splitlines()]


def test_straight_run_writes_model_state_and_metrics(trained_mdm):
    """A run leaves a loadable model folder, a resumable state and one log record per step with eval losses."""
    folder, result = trained_mdm
    assert result.steps == 20 and len(result.losses) == 20
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert (folder / STATE_FILE).exists()
    log = read_log(folder)
    assert [r["step"] for r in log] == list(range(1, 21))
    assert [r["loss"] for r in log] == result.losses
    evals = {r["step"]: r["eval_loss"] for r in log if "eval_loss" in r}
    assert sorted(evals) == [10, 20]  # eval_every=10
    assert all(0 < v < 20 for v in evals.values())
    assert result.eval_loss == evals[20]


def test_resume_replays_the_straight_run_exactly(trained_mdm, tmp_path):
    """Stopping after step 9 and resuming gives bit-identical losses, eval metrics and final weights."""
    straight_dir, straight = trained_mdm
    cfg = get_recipe("tiny-sort-mdm")
    first = train(cfg, tmp_path, stop_after=9, progress=False)
    assert first.steps == 9 and len(first.losses) == 9
    assert json.loads((tmp_path / "config.json").read_text())["train_steps"] == 9
    second = train(cfg, tmp_path, resume=True, progress=False)
    assert second.steps == 20 and len(second.losses) == 11
    assert first.losses + second.losses == straight.losses
    assert read_log(tmp_path) == read_log(straight_dir)  # losses, lrs and eval losses
    a, b = unmask.load_model(straight_dir).state_dict(), unmask.load_model(tmp_path).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_state_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train(get_recipe("tiny-sort-ar"), tmp_path, resume=True, progress=False)


def test_ar_training_reduces_loss(trained_ar):
    """Twenty AR steps lower the training loss from its random-init value (~log V)."""
    _, result = trained_ar
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert last < first


def test_lr_schedule_warmup_then_cosine_to_floor():
    """Linear warm-up to lr, cosine decay to min_lr_ratio * lr at the last step."""
    cfg = dataclasses.replace(get_recipe("tiny-sort-mdm"), steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    values = [lr_at(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_recipes_are_known_and_copies():
    """get_recipe returns a copy; unknown names list the known recipes."""
    cfg = get_recipe("tiny-sort-ar")
    cfg.steps = 1
    assert RECIPES["tiny-sort-ar"].steps == 20
    with pytest.raises(ValueError, match="known recipes"):
        get_recipe("nope")


def test_resume_drops_log_lines_written_after_the_last_checkpoint(tmp_path):
    """A run killed between checkpoints logged steps it will redo; after resume each step appears once."""
    cfg = get_recipe("tiny-sort-ar")
    train(cfg, tmp_path, stop_after=10, progress=False)  # checkpoint at step 10
    with open(tmp_path / "metrics.jsonl", "a") as f:  # what a killed run would have logged past it
        f.write(json.dumps({"step": 11, "loss": 99.0, "lr": 0.0}) + "\n")
    train(cfg, tmp_path, resume=True, progress=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, cfg.steps + 1))
