"""Calibrating Prophet's early-commit gaps on training examples, never on the held-out split.

The published gaps (7.5 / 5.0 / 2.5) were set on LLaDA-8B's logits; a small model with a 100-symbol
vocabulary can be far surer of itself, so its gaps clear them long before its answer has settled.
Each pooling has its own ladder of candidates, most eager first, and we keep the first whose accuracy
on fresh training-distribution examples stays within `tolerance` of decoding without early commit:
mean  the published profile scaled by 1, 1.5, 2, 3, 4;
min   one gap for every stage (the stages are Prophet's hedge for a mean that easy positions inflate).
"""
from __future__ import annotations

from typing import Any

import torch

from unmask.data.sort import SortTask
from unmask.decode.early_commit import DEFAULT_GAPS
from unmask.evaluation import evaluate_sort

SCALES = (1.0, 1.5, 2.0, 3.0, 4.0)
MIN_GAPS = (2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)
CALIBRATION_SEED = "calibrate-early-commit"


def candidates(pool: str) -> list[tuple[str, tuple[float, float, float]]]:
    """(label, stage gaps) to try, most eager first."""
    if pool == "min":
        return [(f"gap {g:g}", (g, g, g)) for g in MIN_GAPS]
    return [(f"gaps x{s:g}", tuple(g * s for g in DEFAULT_GAPS)) for s in SCALES]


def calibrate_early_commit(model: torch.nn.Module, task: SortTask, options: dict[str, Any], *,
                           pools: tuple[str, ...] = ("mean",), n: int = 200, tolerance: float = 0.005,
                           batch_size: int = 32) -> dict[str, dict[str, Any]]:
    """Per pooling, the first candidate within `tolerance` (gaps None if none is); forwards are counted
    per request decoded alone (`solo_nfe_mean`), the saving a request sees."""
    examples = task.train_examples(CALIBRATION_SEED, n)
    plain = evaluate_sort(model, task, examples=examples, batch_size=batch_size, **options)
    found = {}
    for pool in pools:
        info = {"gaps": None, "label": None, "pool": pool, "examples": n, "plain_accuracy": plain["accuracy"],
                "plain_solo_nfe_mean": plain["solo_nfe_mean"], "tried": []}
        for label, gaps in candidates(pool):
            r = evaluate_sort(model, task, examples=examples, batch_size=batch_size, early_commit=gaps,
                              early_commit_pool=pool, **options)
            info["tried"].append({"label": label, "gaps": gaps, "accuracy": r["accuracy"],
                                  "solo_nfe_mean": r["solo_nfe_mean"]})
            if r["accuracy"] >= plain["accuracy"] - tolerance:
                info.update(gaps=gaps, label=label)
                break
        found[pool] = info
    return found
