"""RL for dLLMs (unmask/rl/): the objectives on hand-checked numbers, rollouts' traces, inner updates that
reuse the cached masks, exact resume, and the recipe refusals."""
from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
import torch.nn as nn

from unmask.data.batch import make_batch
from unmask.rl.iteration import estimate, mask_generator, rl_iteration, updated_rows
from unmask.rl.objectives import (clipped_policy_loss, group_advantages, one_step_logprobs, trace_logprobs,
                                  wd1_loss)
from unmask.rl.rewards import exact, partial, speed, total_reward
from unmask.rl.rollout import NEVER, rollout
from unmask.train.loop import train
from unmask.train.recipes import get_recipe

V, MASK = 6, 1


class MaskCounter(nn.Module):
    """A stand-in model with logits a hand can work out: at every position, token 0 scores c * (the masks
    in its row) and every other token 0, so log p(0) = cM - log(e^(cM) + V - 1)."""

    def __init__(self, c: float = 0.5) -> None:
        super().__init__()
        self.c = c
        self.inputs: list[torch.Tensor] = []

    def forward(self, ids: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        self.inputs.append(ids.clone())
        m = (ids == MASK).sum(dim=1, keepdim=True).float()  # (N, 1)
        logits = torch.zeros(*ids.shape, V)
        logits[..., 0] = self.c * m
        return logits


def log_p0(c: float, masks: int) -> float:
    return c * masks - math.log(math.exp(c * masks) + V - 1)


def test_one_step_logprob_is_the_hand_computation():
    # prompt [3 4 5], answer [0 0 2]: answer fully masked, no prompt masking -> 3 masks per row
    batch = make_batch([[3, 4, 5, 0, 0, 2]], [3], pad_id=5)
    scored = batch.target.clone()
    lp = one_step_logprobs(MaskCounter(), batch, scored, MASK, 0.0, torch.Generator().manual_seed(0))
    assert lp[0, 3].item() == pytest.approx(log_p0(0.5, 3), abs=1e-6)
    assert lp[0, 5].item() == pytest.approx(-math.log(math.exp(1.5) + V - 1), abs=1e-6)  # token 2 scores 0
    assert lp[0, :3].abs().sum() == 0  # the prompt is not scored
    # p_mask_prompt: the prompt masks are the generator's draws below p, and one seed gives one draw
    model = MaskCounter()
    gen_a, gen_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    one_step_logprobs(model, batch, scored, MASK, 0.5, gen_a)
    draw = torch.rand(batch.ids.shape, generator=gen_b)
    expected = batch.target | (~batch.target & (draw < 0.5))
    assert torch.equal(model.inputs[-1] == MASK, expected)


def test_trace_logprobs_score_each_token_in_its_own_steps_context():
    # answer positions committed at passes 1, 2, 1, never: at pass 1 all four are masked, at pass 2 two are
    batch = make_batch([[3, 4, 0, 0, 0, MASK]], [2], pad_id=5)
    steps = torch.tensor([[0, 0, 1, 2, 1, NEVER]])
    scored = torch.tensor([[False, False, True, True, True, False]])
    model = MaskCounter()
    lp = trace_logprobs(model, batch, scored, steps, MASK)
    assert lp[0, 2].item() == pytest.approx(log_p0(0.5, 4), abs=1e-6)
    assert lp[0, 4].item() == pytest.approx(log_p0(0.5, 4), abs=1e-6)
    assert lp[0, 3].item() == pytest.approx(log_p0(0.5, 2), abs=1e-6)  # positions of pass >= 2, and the never one
    assert lp[0, 5].item() == 0.0
    seen = sorted(int((x == MASK).sum()) for x in torch.cat(model.inputs))
    assert seen == [2, 4]  # one pass per distinct step of the row


def row_by_row(model, batch, scored, steps, objective):
    """The estimate with one model pass per row (and per trace step): the slow reference."""
    out = torch.zeros(batch.ids.shape)
    for i in range(batch.ids.shape[0]):
        for s in sorted(set(steps[i][scored[i]].tolist())) if objective == "trace-grpo" else [None]:
            hidden = batch.target[i] if s is None else batch.target[i] & ((steps[i] >= s) | (steps[i] == NEVER))
            noisy = torch.where(hidden, torch.full_like(batch.ids[i], MASK), batch.ids[i]).unsqueeze(0)
            lp = torch.log_softmax(model(noisy, valid=batch.valid[i:i + 1]).float(), dim=-1)[0]  # (L, V)
            cols = scored[i] if s is None else scored[i] & (steps[i] == s)
            out = out.index_put((torch.full((int(cols.sum()),), i), cols.nonzero().squeeze(1)),
                                lp[cols].gather(-1, batch.ids[i][cols].unsqueeze(-1)).squeeze(-1))
    return out


@pytest.mark.parametrize("objective", ["diffu-grpo", "trace-grpo"])
def test_shared_passes_give_each_rows_own_logprobs_and_gradient(mdm_model, objective):
    """A group's answers mostly show the model one input (clean prompt, answer masked), which the estimate runs
    once: the log-probs and the gradient must be those of one pass per row."""
    tok = mdm_model.tokenizer
    model = copy.deepcopy(mdm_model)  # its own gradients
    prompts = [tok.encode("sort: 5 3 1") + [tok.sep_token_id], tok.encode("sort: 9 2 7 4") + [tok.sep_token_id]]
    options = {"strategy": "threshold", "threshold": 0.9, "cache": "dual", "temperature": 1.0, "max_new_tokens": 24}
    ro = rollout(model, prompts, 4, options, seed=3)
    batch, scored, steps = ro.batch(tok.pad_token_id)
    assert steps.max() > 1  # some answers took several passes: the trace has distinct contexts too
    weights = torch.randn(batch.ids.shape, generator=torch.Generator().manual_seed(0))
    grads = []
    for estimator in (lambda: estimate(model, dataclasses.replace(get_recipe("tiny-sort-mdm-rl"), objective=objective,
                                                                  p_mask_prompt=0.0), batch, scored, steps, MASK, 0, 0),
                      lambda: row_by_row(model, batch, scored, steps, objective)):
        model.zero_grad()
        lp = estimator()
        (lp * weights).sum().backward()
        grads.append((lp.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (shared, g_shared), (alone, g_alone) = grads
    assert scored.any() and torch.allclose(shared, alone, atol=1e-5)
    assert torch.allclose(g_shared, g_alone, atol=1e-5, rtol=1e-4)


def test_group_advantages_are_relative_to_the_group():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert group_advantages(r, 4).tolist() == [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]


def test_clipped_loss_and_k3_kl_on_hand_numbers():
    logp = torch.tensor([[math.log(1.5)]])
    old, scored = torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool)
    loss, stats = clipped_policy_loss(logp, old, torch.tensor([1.0]), scored, 0.2)
    assert loss.item() == pytest.approx(-1.2)  # min(1.5 A, 1.2 A) for A = 1
    assert stats["clipped"] == 1.0 and stats["ratio_dev"] == pytest.approx(0.5)
    loss, _ = clipped_policy_loss(logp, old, torch.tensor([-1.0]), scored, 0.2)
    assert loss.item() == pytest.approx(1.5)  # min(-1.5, -1.2) for A = -1
    loss, stats = clipped_policy_loss(logp, old, torch.tensor([0.0]), scored, 0.2, ref=torch.zeros(1, 1), beta=0.1)
    kl = 1 / 1.5 + math.log(1.5) - 1  # exp(ref - logp) - (ref - logp) - 1
    assert stats["kl"] == pytest.approx(kl) and loss.item() == pytest.approx(0.1 * kl)


def test_wd1_weights_on_hand_numbers():
    logp = torch.tensor([[-1.0, 0.0], [-2.0, -1.0]])  # sequence log-likelihoods -1 and -3
    scored = torch.ones(2, 2, dtype=torch.bool)
    w = math.exp(1) / (math.exp(1) + math.exp(-1))  # softmax([1, -1])[0]
    expected = -(w * -1 + (1 - w) * -3) + ((1 - w) * -1 + w * -3)
    assert wd1_loss(logp, torch.tensor([1.0, -1.0]), scored, 2).item() == pytest.approx(expected)
    assert wd1_loss(logp, torch.tensor([0.0, 0.0]), scored, 2).item() == pytest.approx(0.0)  # no signal


def test_dropping_uniform_groups_keeps_the_gradient_direction(rl_cfg):
    """Groups of equal rewards add nothing to the clipped loss's or wd1's gradient, so an update on the other
    groups alone points the same way (the clipped loss is a mean over fewer tokens: a larger scale)."""
    cfg = dataclasses.replace(rl_cfg, group=2, drop_uniform_groups=True)
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5, 0.0])  # the middle group is uniform
    adv = group_advantages(rewards, 2)
    kept = updated_rows(adv, 2)
    assert kept.tolist() == [0, 1, 4, 5]
    torch.manual_seed(0)
    logp = torch.randn(6, 3).requires_grad_()
    old, scored = logp.detach() + 0.1 * torch.randn(6, 3), torch.ones(6, 3, dtype=torch.bool)
    full = torch.autograd.grad(clipped_policy_loss(logp, old, adv, scored, 0.2)[0], logp)[0]
    part = torch.autograd.grad(clipped_policy_loss(logp[kept], old[kept], adv[kept], scored[kept], 0.2)[0], logp)[0]
    assert torch.count_nonzero(full[2:4]) == 0
    assert torch.allclose(part, full * 6 / 4)  # 18 scored tokens in all, 12 kept
    full = torch.autograd.grad(wd1_loss(logp, adv, scored, 2), logp)[0]
    part = torch.autograd.grad(wd1_loss(logp[kept], adv[kept], scored[kept], 2), logp)[0]
    assert torch.count_nonzero(full[2:4]) == 0 and torch.allclose(part, full * 3 / 2)  # a mean over 2 groups, not 3
    # no group differs: the first still runs, so every DDP process takes part in the update
    assert updated_rows(torch.zeros(6), 2).tolist() == [0, 1]
    with pytest.raises(ValueError, match="drop_uniform_groups"):
        dataclasses.replace(cfg, kl_beta=0.04)


def test_rewards():
    ex = type("Ex", (), {"answer": "1 2 3"})()
    assert exact(" 1 2 3 ", ex, 1, 10) == 1.0 and exact("1 2", ex, 1, 10) == 0.0
    assert partial("1 2 4", ex, 1, 10) == pytest.approx(2 / 3)
    assert partial("1 2 3 4", ex, 1, 10) == pytest.approx(3 / 4)  # an extra item costs like a wrong one
    assert speed("", ex, 1, 10) == 1.0 and speed("", ex, 10, 10) == 0.0
    assert total_reward({"exact": 1.0, "speed": 0.5}, "1 2 3", ex, 4, 10) == pytest.approx(1 + 0.5 * (1 - 3 / 9))


def test_rollouts_record_the_trace_the_decoder_took(mdm_model):
    tok = mdm_model.tokenizer
    prompts = [tok.encode("sort: 5 3 1") + [tok.sep_token_id], tok.encode("sort: 9 2") + [tok.sep_token_id]]
    options = {"strategy": "threshold", "threshold": 0.5, "cache": "dual", "temperature": 1.0, "max_new_tokens": 24}
    ro = rollout(mdm_model, prompts, 3, options, seed=11)
    assert len(ro) == 6 and ro.prompts[:3] == [prompts[0]] * 3
    again = rollout(mdm_model, prompts, 3, options, seed=11)
    assert again.canvases == ro.canvases and again.steps == ro.steps  # a pure function of the seed
    for i in range(len(ro)):
        n = ro.scored_length(i)
        assert ro.canvases[i][:len(ro.answers[i])] == ro.answers[i]
        assert all(1 <= s <= ro.forwards[i] for s in ro.steps[i][:n])  # every scored token was committed
        assert all((s == NEVER) == (c == mdm_model.mask_token_id) for s, c in zip(ro.steps[i], ro.canvases[i]))


@pytest.fixture(scope="module")
def rl_cfg(trained_mdm):
    return dataclasses.replace(get_recipe("tiny-sort-mdm-rl"), init=str(trained_mdm[0]))


@pytest.mark.parametrize("objective", ["diffu-grpo", "trace-grpo"])
def test_inner_updates_reuse_the_cached_masks(rl_cfg, objective, mdm_model):
    """The first inner update's ratio is exactly 1 (same weights, same masks); a different mask draw would not
    give 1, so the cached old log-probs were computed on the very draw the update sees."""
    cfg = dataclasses.replace(rl_cfg, objective=objective, inner_steps=2, p_mask_prompt=0.5)
    model = type(mdm_model)(mdm_model.config)
    model.load_state_dict(mdm_model.state_dict())
    model.train()
    from unmask.rl.setup import RLRun
    from unmask.data import get_task

    task = get_task("sort", **cfg.task_options)
    run = RLRun.start(cfg, model, mdm_model.tokenizer, task, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    res = rl_iteration(model, model, None, opt, cfg, task, task.train_examples("s", 2), 5, mdm_model.tokenizer)
    assert res.metrics["ratio_dev0"] == 0.0
    assert res.metrics["ratio_dev1"] > 0.0  # the first update moved the weights
    if objective == "diffu-grpo":  # another draw of the prompt masks gives other log-probs
        ro = rollout(model, [task.prompt_ids(mdm_model.tokenizer, "sort: 4 1 3")], 2,
                     {**cfg.rollout, "max_new_tokens": 24}, 0)
        batch, scored, steps = ro.batch(0)
        a = estimate(model, cfg, batch, scored, steps, MASK, 5, 0)
        b = estimate(model, cfg, batch, scored, steps, MASK, 5, 1)
        assert not torch.equal(a, b)
    assert run.reference is None


@pytest.mark.parametrize("objective", ["diffu-grpo", "wd1", "trace-grpo"])
def test_rl_resumes_bit_for_bit(rl_cfg, objective, tmp_path):
    kl = objective == "diffu-grpo"  # the KL term reads every group: none is dropped
    cfg = dataclasses.replace(rl_cfg, objective=objective, kl_beta=0.04 if kl else 0.0, drop_uniform_groups=not kl)
    straight = train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "resumed", stop_after=2, progress=False)
    resumed = train(cfg, tmp_path / "resumed", resume=True, progress=False)
    assert resumed.losses == straight.losses[2:]
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert {"reward", "accuracy", "forwards", "tokens_per_forward", "updated_share"} <= set(records[0])
    assert "eval_accuracy" in records[1]
    assert (tmp_path / "straight" / "rl_curve.png").stat().st_size > 0


@pytest.mark.parametrize("change, says", [
    ({"rewards": {"exactly": 1.0}}, "unknown reward 'exactly'"),
    ({"rewards": {}}, "at least one reward"),
    ({"init": None}, "set the recipe's init"),
    ({"rollout": {"strategy": "threshold", "threshhold": 0.5}}, "threshhold"),
    ({"batch_size": 6}, "groups of 4"),
])
def test_rl_recipe_mistakes_are_refused_by_name(rl_cfg, change, says, tmp_path):
    with pytest.raises(ValueError, match=says):
        train(dataclasses.replace(rl_cfg, **change), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_group_of_one_is_refused(rl_cfg):
    with pytest.raises(ValueError, match="group must be at least 2"):
        dataclasses.replace(rl_cfg, group=1)


def test_lora_trains_adapters_only_and_saves_them_merged(rl_cfg, trained_mdm, tmp_path):
    import unmask
    from unmask.rl.lora import add_lora, merged

    cfg = dataclasses.replace(rl_cfg, lora_rank=4, lr=1e-2)
    train(cfg, tmp_path / "lora", progress=False)
    start, tuned = unmask.load_model(trained_mdm[0]), unmask.load_model(tmp_path / "lora")
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, start.state_dict()[k])]
    assert changed and all(any(t in k for t in ("wq", "wk", "wv", "wo", "gate", "up", "down")) for k in changed)
    # the merged weights compute what the adapted model computes
    adapted = add_lora(type(start)(start.config), 4)
    state = torch.load(tmp_path / "lora" / "train_state.pt", weights_only=False)["model"]
    adapted.load_state_dict(state)
    ids = torch.randint(4, 30, (2, 12))
    torch.testing.assert_close(adapted.eval()(ids), tuned(ids), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged(adapted)(ids), tuned(ids), atol=1e-6, rtol=1e-6)


def test_screening_rolls_out_the_prompts_the_model_gets_wrong_first(rl_cfg):
    """Candidates are decoded once greedily at the rollout point; the wrong ones come first, in their drawn
    order, then right ones. Half the candidates are made right by taking the model's own answer as theirs."""
    import unmask
    from unmask.data import get_task
    from unmask.evaluation import evaluate_sort
    from unmask.rl.setup import RLRun
    from unmask.tokenizers import CharTokenizer

    cfg = dataclasses.replace(rl_cfg, screen_prompts=8)  # rolls out 8 / 4 = 2 prompts a step
    task = get_task(cfg.task, **cfg.task_options)
    run = RLRun.start(cfg, unmask.load_model(cfg.init), CharTokenizer(), task, world=1)
    drawn = task.train_examples("screen", 8)
    said = evaluate_sort(run.model, task, examples=drawn, **run.greedy_options())["outputs"]
    candidates = [dataclasses.replace(ex, answer=text.strip()) if i % 2 == 0 else ex
                  for i, (ex, text) in enumerate(zip(drawn, said))]  # even ones: right by construction
    wrong = [ex for ex, text in zip(candidates, said) if not task.score(text, ex)]
    assert 0 < len(wrong) <= 4
    chosen, share = run.hardest(candidates, 6)
    assert chosen[:len(wrong)] == wrong and share == len(wrong) / 8
    assert chosen[len(wrong):] == [ex for ex in candidates if ex not in wrong][:6 - len(wrong)]
    assert run.model.training  # handed back to the update in training mode
    with pytest.raises(ValueError, match="screen_prompts 1 must be at least the 2 prompts"):
        RLRun.start(dataclasses.replace(cfg, screen_prompts=1), unmask.load_model(cfg.init), CharTokenizer(), task, 1)


def test_a_screened_run_records_the_wrong_share_and_resumes_bit_for_bit(rl_cfg, tmp_path):
    cfg = dataclasses.replace(rl_cfg, screen_prompts=6, drop_uniform_groups=True, kl_beta=0.0)
    straight = train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "resumed", stop_after=2, progress=False)
    assert train(cfg, tmp_path / "resumed", resume=True, progress=False).losses == straight.losses[2:]
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    shares = [r["screened_wrong_share"] for r in records if "reward" in r]
    assert len(shares) == cfg.steps and all(0 <= x <= 1 for x in shares)
