"""An RL run inside `unmask train`: what it checks at start, its reference model, its held-out evaluation and
its reward curve. The loop (unmask/train/loop.py) keeps what every run shares: the optimizer and its
schedule, atomic saves, exact resume, DDP."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unmask.config import TrainConfig
from unmask.decode.spec import resolve
from unmask.models.checkpoints import attach
from unmask.rl.iteration import RL_OBJECTIVES, IterationResult, answer_window, rl_iteration
from unmask.rl.rewards import check_rewards

CURVE_FILE = "rl_curve.png"
__all__ = ["RL_OBJECTIVES", "RLRun"]


@dataclass
class RLRun:
    cfg: TrainConfig
    model: torch.nn.Module
    tok: Any
    task: Any
    reference: torch.nn.Module | None

    @classmethod
    def start(cls, cfg: TrainConfig, model: torch.nn.Module, tok: Any, task: Any, world: int) -> "RLRun":
        """Check the recipe before any work: ValueError with a sentence naming what is wrong."""
        if not cfg.init:
            raise ValueError(f"objective {cfg.objective!r} improves a trained model: set the recipe's init")
        if model.config.kind != "diffusion":
            raise ValueError(f"objective {cfg.objective!r} trains a masked-diffusion model, not a "
                             f"{model.config.kind!r} one")
        if not hasattr(task, "prompt_ids") or not hasattr(task, "max_window"):
            raise ValueError(f"RL needs a prompt -> answer task with a reward (sort, arith), not {cfg.task!r}")
        check_rewards(cfg.rewards)
        if cfg.batch_size % (world * cfg.group):
            raise ValueError(f"batch size {cfg.batch_size} (rollouts per step) must split into groups of "
                             f"{cfg.group} on each of {world} processes")
        # what the engine and the evaluation read answers with
        attach(model, tok, name=cfg.name, meta={"task": cfg.task, "task_options": cfg.task_options})
        resolve(model.config, {**cfg.rollout, "max_new_tokens": answer_window(cfg, task)})  # refusals now
        prompts = cfg.batch_size // cfg.group
        if cfg.screen_prompts and (cfg.screen_prompts < prompts or cfg.screen_prompts % world):
            raise ValueError(f"screen_prompts {cfg.screen_prompts} must be at least the {prompts} prompts a step "
                             f"rolls out (batch size / group) and split evenly over {world} processes")
        reference = None
        if cfg.kl_beta:
            reference = copy.deepcopy(model).eval()
            for p in reference.parameters():
                p.requires_grad_(False)
        if cfg.lora_rank:
            from unmask.rl.lora import add_lora

            add_lora(model, cfg.lora_rank)  # in place: the loop's optimizer then sees only the adapters
        return cls(cfg, model, tok, task, reference)

    def iteration(self, policy: torch.nn.Module, opt: torch.optim.Optimizer, step: int, rank: int,
                  world: int) -> IterationResult:
        from unmask.train.loop import hash_seed

        seed = f"{self.cfg.seed}-{step}-{rank}"
        n = self.cfg.batch_size // world // self.cfg.group
        screened = {}
        if self.cfg.screen_prompts:
            candidates = self.task.train_examples(seed, self.cfg.screen_prompts // world)
            examples, screened["screened_wrong_share"] = self.hardest(candidates, n)
        else:
            examples = self.task.train_examples(seed, n)
        result = rl_iteration(self.model, policy, self.reference, opt, self.cfg, self.task, examples,
                              hash_seed(seed) % (1 << 31), self.tok)
        result.metrics.update(screened)
        return result

    def greedy_options(self) -> dict[str, Any]:
        """The rollout operating point without its sampling: what the held-out accuracy decodes with."""
        options = {k: v for k, v in self.cfg.rollout.items() if k not in ("temperature", "top_k", "top_p", "seed")}
        return {**options, "max_new_tokens": answer_window(self.cfg, self.task)}

    def hardest(self, candidates: list, n: int) -> tuple[list, float]:
        """The n candidates to roll out, those the greedy decode at the rollout point gets wrong first (in their
        drawn order), then right ones; and the wrong share of all candidates."""
        from unmask.evaluation import evaluate_sort

        res = evaluate_sort(self.model, self.task, examples=candidates, **self.greedy_options())
        self.model.train()
        wrong = [not self.task.score(text, ex) for text, ex in zip(res["outputs"], candidates)]
        ordered = [ex for ex, w in zip(candidates, wrong) if w] + [ex for ex, w in zip(candidates, wrong) if not w]
        return ordered[:n], sum(wrong) / len(candidates)

    def evaluate(self) -> dict[str, float]:
        """Held-out accuracy and forwards per answer at the rollout operating point, greedy (no temperature)."""
        from unmask.evaluation import evaluate_sort

        res = evaluate_sort(self.model, self.task, limit=self.cfg.eval_examples, **self.greedy_options())
        self.model.train()
        return {"eval_accuracy": res["accuracy"], "eval_forwards": res["nfe_mean"],
                "eval_tokens_per_forward": res["tokens_per_forward"]}

    def plot(self, out: Path) -> None:
        """Reward, accuracy and forwards per answer against the step, from metrics.jsonl, as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
        steps = [r["step"] for r in records]
        top.plot(steps, [r["reward"] for r in records], label="reward (rollouts)", alpha=0.6)
        top.plot(steps, [r["accuracy"] for r in records], label="accuracy (rollouts)", alpha=0.6)
        evals = [r for r in records if "eval_accuracy" in r]
        top.plot([r["step"] for r in evals], [r["eval_accuracy"] for r in evals], "o-", label="held-out accuracy")
        top.set_ylabel("reward / accuracy")
        top.legend()
        bottom.plot(steps, [r["forwards"] for r in records], label="forwards per answer (rollouts)")
        bottom.set_xlabel("RL step")
        bottom.set_ylabel("forwards")
        bottom.legend()
        fig.suptitle(f"{self.cfg.name}: {self.cfg.objective}")
        fig.tight_layout()
        fig.savefig(out / CURVE_FILE, dpi=100)
        plt.close(fig)
