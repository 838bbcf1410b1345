"""One RL iteration of `unmask train`: rollouts, rewards, advantages, then `inner_steps` policy updates.

The loop (unmask/train/loop.py) calls `rl_iteration` once per step with that step's seed, so an iteration is
a pure function of (weights, optimizer state, seed): rollouts sample with seeds drawn from it, and the
one-step estimate's prompt masks of inner update k come from a generator seeded by (seed, k), the same
draw for the cached old log-probs, the reference's and the update's own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from unmask.config import TrainConfig
from unmask.rl.objectives import (clipped_policy_loss, group_advantages, one_step_logprobs, trace_logprobs,
                                  wd1_loss)
from unmask.rl.rewards import REWARDS, total_reward
from unmask.rl.rollout import Rollouts, rollout

RL_OBJECTIVES = ("diffu-grpo", "wd1", "trace-grpo")


@dataclass
class IterationResult:
    loss: float  # mean over the inner updates
    metrics: dict[str, float]


def answer_window(cfg: TrainConfig, task: Any) -> int:
    return int(cfg.rollout.get("max_new_tokens") or task.max_window)


def mask_generator(seed: int, inner: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + inner) % (1 << 63))


def estimate(model: torch.nn.Module, cfg: TrainConfig, batch, scored: torch.Tensor, steps: torch.Tensor,
             mask_id: int, seed: int, inner: int) -> torch.Tensor:
    """The objective's per-token log-probs `# (N, L)` for inner update `inner`."""
    if cfg.objective == "trace-grpo":
        return trace_logprobs(model, batch, scored, steps, mask_id)
    return one_step_logprobs(model, batch, scored, mask_id, cfg.p_mask_prompt, mask_generator(seed, inner))


def rl_iteration(model: torch.nn.Module, policy: torch.nn.Module, reference: torch.nn.Module | None,
                 opt: torch.optim.Optimizer, cfg: TrainConfig, task: Any, examples: list, seed: int,
                 tok: Any) -> IterationResult:
    """Roll out `cfg.group` answers per example with `model` (the bare module), score them, and update
    through `policy` (the module or its DDP wrapper) `cfg.inner_steps` times."""
    window = answer_window(cfg, task)
    prompts = [task.prompt_ids(tok, ex.prompt) for ex in examples]
    ro = rollout(model, prompts, cfg.group, {**cfg.rollout, "max_new_tokens": window}, seed)
    texts = [tok.decode(a) for a in ro.answers]
    per_example = [ex for ex in examples for _ in range(cfg.group)]
    rewards = torch.tensor([total_reward(cfg.rewards, t, ex, f, window)
                            for t, ex, f in zip(texts, per_example, ro.forwards)], dtype=torch.float32)
    advantages = group_advantages(rewards, cfg.group)
    batch, scored, steps = ro.batch(tok.pad_token_id)
    kept = updated_rows(advantages, cfg.group) if cfg.drop_uniform_groups else None
    if kept is not None:
        batch = type(batch)(batch.ids[kept], batch.valid[kept], batch.target[kept])
        scored, steps, advantages = scored[kept], steps[kept], advantages[kept]
    device = next(model.parameters()).device
    batch = type(batch)(batch.ids.to(device), batch.valid.to(device), batch.target.to(device))
    scored, steps, advantages = scored.to(device), steps.to(device), advantages.to(device)
    mask_id = tok.mask_token_id
    old, ref = cached_logprobs(model, reference, cfg, batch, scored, steps, mask_id, seed)
    losses, stats = [], {}
    for k in range(cfg.inner_steps):
        logp = estimate(policy, cfg, batch, scored, steps, mask_id, seed, k)
        if cfg.objective == "wd1":
            loss = wd1_loss(logp, advantages, scored, cfg.group)
        else:
            loss, step_stats = clipped_policy_loss(logp, old[k], advantages, scored, cfg.clip_eps,
                                                   ref[k] if ref else None, cfg.kl_beta)
            stats.update({f"{name}{k}" if name == "ratio_dev" else name: v for name, v in step_stats.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
    metrics = rollout_metrics(ro, texts, per_example, rewards)
    metrics["updated_share"] = 1.0 if kept is None else len(kept) / len(ro)
    metrics.update(stats)
    return IterationResult(sum(losses) / len(losses), metrics)


def updated_rows(advantages: torch.Tensor, group: int) -> torch.Tensor:
    """The rows of the groups with an advantage other than 0 `# (n,)`: the only ones any objective's gradient
    reads without KL. (Equal rewards can leave r - mean(r) a rounding away from 0, 1e-7 in float32; such a
    group is kept, its gradient being tiny but not 0, so dropping never changes more than the loss's scale.)
    None kept: the first group still runs (a zero gradient without KL), so every DDP process takes part in
    each update."""
    informative = advantages.view(-1, group).ne(0).any(dim=1)  # (groups,)
    if not informative.any():
        informative[0] = True
    return informative.repeat_interleave(group).nonzero().squeeze(1)


@torch.no_grad()
def cached_logprobs(model: torch.nn.Module, reference: torch.nn.Module | None, cfg: TrainConfig, batch,
                    scored: torch.Tensor, steps: torch.Tensor, mask_id: int, seed: int
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """The old policy's log-probs for each inner update (its own mask draw) and the reference's, before any
    update; wd1 needs neither."""
    if cfg.objective == "wd1":
        return [], None
    was_training = model.training
    model.eval()
    try:
        inner = 1 if cfg.objective == "trace-grpo" else cfg.inner_steps  # the trace estimate has no draw
        old = [estimate(model, cfg, batch, scored, steps, mask_id, seed, k) for k in range(inner)]
        ref = None
        if reference is not None and cfg.kl_beta:
            ref = [estimate(reference, cfg, batch, scored, steps, mask_id, seed, k) for k in range(inner)]
    finally:
        model.train(was_training)
    if cfg.objective == "trace-grpo":
        old = old * cfg.inner_steps
        ref = ref * cfg.inner_steps if ref is not None else None
    return old, ref


def rollout_metrics(ro: Rollouts, texts: list[str], examples: list, rewards: torch.Tensor) -> dict[str, float]:
    n = len(ro)
    exact = REWARDS["exact"]
    tokens = sum(len(a) + e for a, e in zip(ro.answers, ro.ended_with_eos))
    return {"reward": float(rewards.mean()), "accuracy": sum(exact(t, ex, 0, 1) for t, ex in zip(texts, examples)) / n,
            "forwards": sum(ro.forwards) / n, "tokens_per_forward": tokens / max(1, sum(ro.forwards))}
