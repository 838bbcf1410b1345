"""Training the continuous model in the ordinary loop: the objective's pieces, learning, exact resume."""
from __future__ import annotations

import json
import math

import pytest
import torch

import unmask
from unmask.config import TrainConfig
from unmask.data.batch import Batch
from unmask.train.flow_objective import clean_prefix, flow_loss, noised
from unmask.train.loop import train
from unmask.train.recipes import get_recipe


def read_log(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_prompts_stay_clean_and_text_rows_may_keep_a_prefix() -> None:
    ids = torch.arange(40).view(4, 10) + 4
    target = torch.ones(4, 10, dtype=torch.bool)
    target[0, :3] = False  # a prompt of 3 tokens
    batch = Batch(ids, torch.ones_like(target), target)
    gen = torch.Generator().manual_seed(0)
    prefixes = []
    for _ in range(50):
        noisy = clean_prefix(batch, gen)
        assert not bool(noisy[0, :3].any()) and bool(noisy[0, 3:].all())  # the prompt row: exactly its targets
        lengths = (~noisy[1:]).sum(1)  # text rows: a clean prefix of at most half
        assert bool((lengths <= 5).all())
        assert all(bool(noisy[r, int(n):].all()) for r, n in zip(range(1, 4), lengths))
        prefixes += lengths.tolist()
    assert 0 in prefixes and max(prefixes) > 0  # both kinds of row occur


def test_prefix_share_sets_how_many_text_rows_keep_a_clean_prefix() -> None:
    batch = Batch(torch.randint(4, 60, (64, 10)), torch.ones(64, 10, dtype=torch.bool), torch.ones(64, 10, dtype=torch.bool))
    gen = torch.Generator().manual_seed(0)
    assert all(torch.equal(clean_prefix(batch, gen, share=0.0), batch.target) for _ in range(20))
    with_prefix = sum(int((~clean_prefix(batch, gen, share=1.0)).any(1).sum()) for _ in range(20))
    assert with_prefix > 0.8 * 20 * 64  # every row drew a prefix; only the length-0 draws show none


def test_uniform_rows_reach_the_whole_noise_range_and_stay_out_of_the_schedule_fit(flow_model, monkeypatch) -> None:
    with torch.no_grad():  # a trained-looking schedule: narrow, well above the clean end
        flow_model.schedule.mu.fill_(3.0)
        flow_model.schedule.log_beta.fill_(math.log(0.5))
    levels = []
    forward = flow_model.forward

    def recording(*args, flow=None, **kwargs):
        levels.append(flow.g[torch.isfinite(flow.g)])
        return forward(*args, flow=flow, **kwargs)

    monkeypatch.setattr(flow_model, "forward", recording)
    batch = Batch(torch.randint(4, 60, (64, 12)), torch.ones(64, 12, dtype=torch.bool), torch.ones(64, 12, dtype=torch.bool))
    flow_loss(flow_model, batch, torch.Generator().manual_seed(0), uniform_share=0.0)
    assert float(torch.cat(levels).min()) > 1.0  # the schedule alone never trains the clean end
    levels.clear()
    flow_model.zero_grad()
    flow_loss(flow_model, batch, torch.Generator().manual_seed(0), uniform_share=1.0).backward()
    g = torch.cat(levels)
    assert float(g.min()) < -5 and float(g.max()) > 5
    assert flow_model.schedule.mu.grad is None  # no scheduled rows: nothing to fit


@pytest.mark.parametrize("field", ["flow_prefix_share", "flow_uniform_share"])
def test_row_shares_outside_zero_to_one_are_refused(field) -> None:
    with pytest.raises(ValueError, match=field):
        TrainConfig(name="x", task="shakespeare", model=get_recipe("tiny-shakespeare-flow").model, **{field: 1.5})


def test_noised_inputs_are_clean_where_not_noisy(flow_model) -> None:
    ids = torch.tensor([[5, 6, 7, 8]])
    noisy = torch.tensor([[False, True, True, False]])
    inputs = noised(flow_model, ids, noisy, torch.tensor([1.5]), torch.Generator().manual_seed(0))
    assert torch.isinf(inputs.g[0, [0, 3]]).all() and torch.equal(inputs.g[0, [1, 2]], torch.tensor([1.5, 1.5]))


def test_the_loss_reaches_every_trained_part(flow_model) -> None:
    flow_model.train()
    batch = Batch(torch.randint(4, 60, (4, 12)), torch.ones(4, 12, dtype=torch.bool), torch.ones(4, 12, dtype=torch.bool))
    flow_loss(flow_model, batch, torch.Generator().manual_seed(0)).backward()
    for name in ("embed.weight", "schedule.mu", "schedule.log_beta", "modulation.weight", "time_mlp.0.weight",
                 "layers.0.modulation_offset", "final_modulation.weight", "head.weight"):
        grad = dict(flow_model.named_parameters())[name].grad
        assert grad is not None and bool(grad.abs().sum() > 0), name


def test_training_lowers_the_held_out_loss(trained_flow) -> None:
    folder, result = trained_flow
    evals = {r["step"]: r["eval_loss"] for r in read_log(folder) if "eval_loss" in r}
    assert sorted(evals) == [10, 20] and evals[20] < evals[10]
    assert unmask.load_model(folder).config.kind == "continuous"


def test_resume_replays_the_straight_run_exactly(trained_flow, tmp_path) -> None:
    straight_dir, straight = trained_flow
    cfg = get_recipe("tiny-shakespeare-flow")
    first = train(cfg, tmp_path, stop_after=9, progress=False)
    second = train(cfg, tmp_path, resume=True, progress=False)
    assert first.losses + second.losses == straight.losses
    assert read_log(tmp_path) == read_log(straight_dir)
    a, b = unmask.load_model(straight_dir).state_dict(), unmask.load_model(tmp_path).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
