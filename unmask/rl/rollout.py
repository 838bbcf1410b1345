"""RL rollouts: G answers per prompt from any decoder, batched through the one engine, each with its trace.

A rollout is an ordinary batched generation (unmask.engine.Engine) whose requests ask for a trace: for every
answer position the decoder committed, the forward pass that committed it and its token
(`SamplingParams(trace=True)`). The trace is what trace-aware RL follows; the forward count is what a speed
reward reads. Positions never committed (the row ended at EOS before their block ran) stay [MASK].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from unmask.data.batch import Batch, make_batch
from unmask.decode.spec import SEED_LIMIT
from unmask.engine.engine import Engine
from unmask.engine.request import SamplingParams

NEVER = 0  # the trace step of a position no pass committed (passes count from 1)


@dataclass
class Rollouts:
    """`n_prompts * group` answers, prompt-major: rows [g*G, (g+1)*G) answer prompt g."""

    prompts: list[list[int]]  # (N,) prompt ids, each row's own (repeated G times)
    answers: list[list[int]]  # (N,) final answer ids, EOS excluded
    ended_with_eos: list[bool]
    canvases: list[list[int]]  # (N, W) every answer position: its committed token, or [MASK]
    steps: list[list[int]]  # (N, W) the pass that committed each position, NEVER for none
    forwards: list[int]  # (N,) forward passes each answer took
    group: int

    def __len__(self) -> int:
        return len(self.answers)

    def scored_length(self, i: int) -> int:
        """Answer positions a loss scores: the answer and its EOS (d1's completion mask)."""
        return len(self.answers[i]) + int(self.ended_with_eos[i])

    def batch(self, pad_id: int) -> tuple[Batch, torch.Tensor, torch.Tensor]:
        """(prompt + canvas batch `# (N, L)`, scored `# (N, L)` bool, trace steps `# (N, L)` long; 0 off the
        answer). The batch's `target` is every canvas position, the ones a one-step estimate masks."""
        seqs = [p + c for p, c in zip(self.prompts, self.canvases)]
        batch = make_batch(seqs, [len(p) for p in self.prompts], pad_id)
        scored = torch.zeros_like(batch.target)
        steps = torch.zeros(batch.ids.shape, dtype=torch.long)
        for i, (p, s) in enumerate(zip(self.prompts, self.steps)):
            scored[i, len(p):len(p) + self.scored_length(i)] = True
            steps[i, len(p):len(p) + len(s)] = torch.tensor(s, dtype=torch.long)
        return batch, scored, steps


@torch.no_grad()
def rollout(model: torch.nn.Module, prompts: list[list[int]], group: int, options: dict[str, Any], seed: int,
            max_running: int = 64) -> Rollouts:
    """`group` answers per prompt with the decoding `options` (unmask's decoding options; `max_new_tokens`
    required); answer k of the whole batch samples with seed + k, so a rollout is a pure function of the
    weights, the prompts and `seed`. The model is run in eval mode and left as it was found."""
    if group < 1:
        raise ValueError(f"group must be at least 1, not {group}")
    if options.get("max_new_tokens") is None:
        raise ValueError("rollout options must give max_new_tokens (the answer window)")
    window = int(options["max_new_tokens"])
    options = {k: v for k, v in options.items() if k != "seed"}
    was_training = model.training
    model.eval()
    try:
        rows = [p for p in prompts for _ in range(group)]
        engine = Engine(model, max_running=max(1, min(max_running, len(rows))))
        reqs = [engine.add_request(p, SamplingParams(trace=True, **options, seed=(seed + k) % SEED_LIMIT))
                for k, p in enumerate(rows)]
        while engine.has_work():
            engine.step()
    finally:
        model.train(was_training)
    failed = [r for r in reqs if r.finish_reason in ("error", "cancelled")]
    if failed:
        raise RuntimeError(f"a rollout failed: {failed[0].error}")
    canvases, steps = [], []
    for r in reqs:
        canvas, step = [model.mask_token_id] * window, [NEVER] * window
        for pos, (pass_no, token) in (r.trace or {}).items():
            if pos < window:
                canvas[pos], step[pos] = token, pass_no
        canvases.append(canvas)
        steps.append(step)
    return Rollouts(prompts=rows, answers=[list(r.output_ids) for r in reqs],
                    ended_with_eos=[len(r.output_ids) < window and c[len(r.output_ids)] == model.eos_token_id
                                    for r, c in zip(reqs, canvases)],
                    canvases=canvases, steps=steps, forwards=[r.nfe for r in reqs], group=group)
