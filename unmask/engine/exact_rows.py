"""Block-causal rows in the engine: each row's finished blocks' keys and values, committed once.

A block-causal model's block never sees later ones, so once every column of a model block is final
its keys and values are too (the rule `ExactBlockCache` applies to one generation). Here each row
keeps its own committed prefix; one batched pass runs every row's window [committed, end) against
its own prefix, and the columns that became final ride along and are committed by that same pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from unmask.models.kv_cache import KVCache


@dataclass
class ExactPrefix:
    """Slots [0, committed) of one row: final keys and values `# (n_layers, Hkv, committed, D)`."""

    committed: int = 0
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None


# A pass's fixed cost in tokens' worth of compute: on this 2-core CPU a pass over 8 tokens took 1.8 ms and one
# over 70 took 2.9 ms, so ~1.7 ms of it is fixed and each token adds ~18 us (~90 tokens' worth of fixed cost).
PASS_OVERHEAD_TOKENS = 64


def plan_passes(widths: list[int], overhead: int = PASS_OVERHEAD_TOKENS) -> list[list[int]]:
    """Split rows into passes: a pass pads every row to its widest, so rows of similar width go together.

    Minimises the sum over passes of (overhead + rows x widest window) over splits of the rows sorted by
    width (an optimal split of sorted rows is contiguous); returns lists of row indices, widest pass first.
    """
    order = sorted(range(len(widths)), key=lambda i: -widths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the j widest rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # the last pass holds sorted rows i..j-1, padded to row i's width
            cost = best[i] + overhead + (j - i) * widths[order[i]]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    passes, j = [], n
    while j > 0:
        passes.append(order[cut[j]:j])
        j = cut[j]
    return passes[::-1]


def model_block_end(col: int, size: int, total: int) -> int:
    """End of the model block holding column `col` (positions are columns: rows are never padded)."""
    return min((col // size + 1) * size, total)


def window_for(prefix: ExactPrefix, span: tuple[int, int], size: int, total: int) -> tuple[int, int]:
    """Columns a pass must run to score span [s, e): from the first uncommitted one to its model block's end."""
    return prefix.committed, model_block_end(span[1] - 1, size, total)


@torch.no_grad()
def forward_windows(model: torch.nn.Module, xs: list[torch.Tensor], prefixes: list[ExactPrefix],
                    spans: list[tuple[int, int]], windows: list[tuple[int, int]]) -> list[torch.Tensor]:
    """One pass for rows `xs` (each `# (T_i,)`) scoring their spans over their windows [c_i, end_i) (`window_for`,
    taken before this pass commits); returns each window's logits `# (end_i - c_i, V)`, and commits to each
    prefix the columns before the model block holding s_i.

    Layout: row i's prefix fills slots [S - c_i, S) and its window the last n_i of slots [S, S + Lq), so the
    queries share one run of slots; unused slots are padding, never attended (RoPE positions are explicit).
    """
    size = model.config.block_size
    S = max(c for c, _ in windows)
    Lq = max(e - c for c, e in windows)
    B = len(xs)
    cache = KVCache.for_model(model, B, S + Lq)
    ids = torch.full((B, Lq), model.pad_token_id, dtype=torch.long)  # (B, Lq)
    positions = torch.zeros(B, Lq, dtype=torch.long)
    valid = torch.zeros(B, Lq, dtype=torch.bool)
    for i, (x, p, (c, e)) in enumerate(zip(xs, prefixes, windows)):
        if c:
            cache.k[:, i, :, S - c:S], cache.v[:, i, :, S - c:S] = p.k, p.v
            cache.positions[i, S - c:S] = torch.arange(c)
            cache.valid[i, S - c:S] = True
        o = Lq - (e - c)
        ids[i, o:], positions[i, o:], valid[i, o:] = x[c:e], torch.arange(c, e), True
    cache.length = S
    logits = model(ids, positions, valid=valid, cache=cache, start=S)  # (B, Lq, V)
    out = []
    for i, (p, (c, e), (s, _)) in enumerate(zip(prefixes, windows, spans)):
        o = Lq - (e - c)
        out.append(logits[i, o:])
        final = max(c, s // size * size)  # columns before the model block holding s saw only clean blocks
        if final > c:
            k, v = cache.k[:, i, :, S + o:S + o + final - c], cache.v[:, i, :, S + o:S + o + final - c]
            p.k = k.clone() if p.k is None else torch.cat([p.k, k], dim=2)
            p.v = v.clone() if p.v is None else torch.cat([p.v, v], dim=2)
            p.committed = final
    return out
