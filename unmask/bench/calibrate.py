"""Calibrating Prophet's early-commit gaps on training examples, never on the held-out split.

The published gaps (7.5 / 5.0 / 2.5) were set on LLaDA-8B's logits; a small model with a 100-symbol
vocabulary can be far surer of itself, so its gaps clear them long before its answer has settled.
We scale the whole profile by 1, 1.5, 2, 3, 4 and keep the smallest scale whose accuracy on fresh
training-distribution examples stays within `tolerance` of decoding without early commit.
"""
from __future__ import annotations

from typing import Any

import torch

from unmask.data.sort import SortTask
from unmask.decode.early_commit import DEFAULT_GAPS
from unmask.evaluation import evaluate_sort

SCALES = (1.0, 1.5, 2.0, 3.0, 4.0)
CALIBRATION_SEED = "calibrate-early-commit"


def calibrate_early_commit(model: torch.nn.Module, task: SortTask, options: dict[str, Any], *, n: int = 200,
                           tolerance: float = 0.005, batch_size: int = 32) -> dict[str, Any]:
    examples = task.train_examples(CALIBRATION_SEED, n)
    plain = evaluate_sort(model, task, examples=examples, batch_size=batch_size, **options)
    tried = []
    for scale in SCALES:
        gaps = tuple(g * scale for g in DEFAULT_GAPS)
        r = evaluate_sort(model, task, examples=examples, batch_size=batch_size, early_commit=gaps, **options)
        tried.append({"scale": scale, "gaps": gaps, "accuracy": r["accuracy"], "nfe_mean": r["nfe_mean"]})
        if r["accuracy"] >= plain["accuracy"] - tolerance:
            return {"gaps": gaps, "scale": scale, "examples": n, "plain_accuracy": plain["accuracy"],
                    "plain_nfe_mean": plain["nfe_mean"], "tried": tried}
    return {"gaps": None, "scale": None, "examples": n, "plain_accuracy": plain["accuracy"],
            "plain_nfe_mean": plain["nfe_mean"], "tried": tried}
