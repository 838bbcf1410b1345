"""How the runner packs rows' work into forward passes: which rows share a pass, and each pass's tensors.

Plain shapes only: nothing here knows a decoding rule. A row's work names its query columns, their
token ids and how many of its slot columns they attend; a pass pads every row's queries to the widest
(padding is never written to the cache nor attended) and reads each row's own KV slots.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from unmask.decode.rows.base import Work
from unmask.models.flow import FlowInputs
from unmask.models.paged_cache import PagedKVCache, PassView

# A pass's fixed cost in tokens' worth of compute: on this 2-core CPU a pass over 8 tokens took 1.8 ms and one
# over 70 took 2.9 ms, so ~1.7 ms of it is fixed and each token adds ~18 us (~90 tokens' worth of fixed cost).
PASS_OVERHEAD_TOKENS = 64


def plan_passes(widths: list[int], overhead: int = PASS_OVERHEAD_TOKENS) -> list[list[int]]:
    """Split rows into passes: a pass pads every row to its widest, so rows of similar width go together.

    Minimises the sum over passes of (overhead + rows x widest) over splits of the rows sorted by width
    (an optimal split of sorted rows is contiguous); returns lists of row indices, widest pass first,
    each in the rows' own order.
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
        passes.append(sorted(order[cut[j]:j]))
        j = cut[j]
    return passes[::-1]


@dataclass
class Pass:
    ids: torch.Tensor  # (B, Lq) padded with pad ids
    positions: torch.Tensor  # (B, Lq) RoPE positions: the query columns
    mask: torch.Tensor | None  # (B, 1, Lq, K) True where a query attends a key column; None: all
    view: PassView
    flow: Any = None  # a continuous model's inputs, padded like ids (FlowInputs of (B, Lq, ...) tensors)


def build_pass(works: list[Work], tables: list[torch.Tensor], pool: PagedKVCache, attention: str,
               block_size: int | None, pad_id: int) -> Pass:
    """The tensors of one pass over `works` (one per row), whose KV slots are `tables`."""
    dev = pool.device
    B = len(works)
    n = [w.ids.numel() for w in works]
    Lq, K = max(n), max(w.keys for w in works)
    ids = torch.full((B, Lq), pad_id, dtype=torch.long, device=dev)
    positions = torch.zeros(B, Lq, dtype=torch.long, device=dev)
    columns = [w.columns for w in works]
    for i, (w, c) in enumerate(zip(works, columns)):
        ids[i, :n[i]], positions[i, :n[i]] = w.ids, c
    view = pool.view(tables, columns, [w.keys for w in works], Lq)
    return Pass(ids, positions, pass_mask(works, positions, n, K, attention, block_size, dev), view,
                pad_flow(works, Lq))


def pad_flow(works: list[Work], width: int) -> Any:
    """The rows' continuous inputs stacked and padded to `width` (padding: clean, its id a pad); None when
    no row has any."""
    if all(w.flow is None for w in works):
        return None
    first = works[0].flow
    B, dim = len(works), first.z.shape[-1]
    z = first.z.new_zeros(B, width, dim)
    g = first.g.new_full((B, width), float("-inf"))
    sc = None if all(w.flow.self_cond is None for w in works) else first.z.new_zeros(B, width, dim)
    for i, w in enumerate(works):
        n = w.ids.numel()
        z[i, :n], g[i, :n] = w.flow.z, w.flow.g
        if sc is not None and w.flow.self_cond is not None:
            sc[i, :n] = w.flow.self_cond
    return FlowInputs(z, g, sc)


def pass_mask(works: list[Work], positions: torch.Tensor, n: list[int], K: int, attention: str,
              block_size: int | None, dev: torch.device) -> torch.Tensor | None:
    """`# (B, 1, Lq, K)`: the model's rule over key columns [0, keys_i), or the row's own mask; a padded
    query sees at least key 0 (its output is dropped, but softmax needs one finite key)."""
    B, Lq = positions.shape
    keys = torch.tensor([w.keys for w in works], device=dev)
    explicit = [i for i, w in enumerate(works) if w.mask is not None]
    if attention == "bidirectional" and not explicit and bool((keys == K).all()):
        return None  # every row attends all K keys; padded queries are dropped anyway
    kcol = torch.arange(K, device=dev)
    allowed = (kcol[None, None, :] < keys[:, None, None]).expand(B, Lq, K)  # (B, Lq, K)
    qp = positions[:, :, None]
    if attention == "causal":
        allowed = allowed & (kcol[None, None, :] <= qp)
    elif attention == "block-causal":  # each row's own block (a flexible family's request), else the model's
        size = torch.tensor([w.block_size or block_size for w in works], device=dev)[:, None, None]
        allowed = allowed & (kcol[None, None, :] // size <= qp // size)
    allowed = allowed.clone()
    for i in explicit:
        allowed[i, :n[i]] = False
        allowed[i, :n[i], :works[i].keys] = works[i].mask
    padded = torch.arange(Lq, device=dev)[None, :] >= torch.tensor(n, device=dev)[:, None]  # (B, Lq)
    allowed[:, :, 0] |= padded
    return allowed[:, None]
