"""How many CPU threads a model's forward passes get.

Splitting an op across threads pays a synchronisation cost per op. A small model's ops are too small
to repay it: on this project's 2-core machine a 0.8M-parameter forward over 70 tokens took 3.8 ms on one
thread and 10.7 ms on two (batch 1), and 47 against 53 ms at batch 16; a 4.9M one 12.9 against 38 ms.
From about 25M parameters two threads win at batch 16 (717 against 518 ms) and from ~100M at batch 1.
So models under SMALL_MODEL_PARAMS run on one thread unless told otherwise, larger ones keep torch's
default (every core).
"""
from __future__ import annotations

import os

import torch

SMALL_MODEL_PARAMS = 10_000_000


def choose_threads(model: torch.nn.Module, requested: int | None = None) -> int:
    """Set torch's intra-op threads for `model` and return the number.

    requested (e.g. `--threads`) wins; then OMP_NUM_THREADS if the user set it; then one thread for a small
    model on the CPU; otherwise torch's default is left alone.
    """
    if requested is not None:
        torch.set_num_threads(check_threads(requested))
    elif not os.environ.get("OMP_NUM_THREADS") and on_cpu(model) and n_params(model) < SMALL_MODEL_PARAMS:
        torch.set_num_threads(1)
    return torch.get_num_threads()


def check_threads(n: int) -> int:
    """`n` if it is a usable thread count, else ValueError with one sentence."""
    if n < 1:
        raise ValueError(f"--threads must be at least 1, not {n}")
    return n


def on_cpu(model: torch.nn.Module) -> bool:
    return all(p.device.type == "cpu" for p in model.parameters())


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
