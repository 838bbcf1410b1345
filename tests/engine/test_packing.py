"""Packing rows' work into passes, and the KV page pool, without a model."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from unmask.decode.rows.base import Work
from unmask.decode.rows.strided import pass_mask as strided_mask
from unmask.engine.packing import build_pass, pass_mask, plan_passes
from unmask.models.paged_cache import PAGE, PagedKVCache

CPU = torch.device("cpu")


def works_and_positions(specs):
    """Works from (start, n_queries, keys) and their padded positions `# (B, Lq)`, as build_pass makes them."""
    works = [Work(torch.full((n,), 5), start, keys) for start, n, keys in specs]
    n = [w.ids.numel() for w in works]
    positions = torch.zeros(len(works), max(n), dtype=torch.long)
    for i, w in enumerate(works):
        positions[i, :n[i]] = w.columns
    return works, positions, n, max(w.keys for w in works)


# -- plan_passes --------------------------------------------------------------------------------------

def check_partition(passes, count):
    assert sorted(i for p in passes for i in p) == list(range(count))  # every row exactly once
    assert all(p == sorted(p) for p in passes)  # each pass in the rows' own order


def test_rows_of_similar_width_share_a_pass():
    passes = plan_passes([100, 100, 4, 4], overhead=64)  # one pass: 64 + 4*100; two: 64 + 200 + 64 + 8
    check_partition(passes, 4)
    assert passes == [[0, 1], [2, 3]]
    passes = plan_passes([4, 100, 4, 100], overhead=64)
    check_partition(passes, 4)
    assert passes == [[1, 3], [0, 2]]  # widest pass first


def test_one_pass_when_passes_are_dear_and_none_for_no_rows():
    assert plan_passes([100, 100, 4, 4], overhead=1000) == [[0, 1, 2, 3]]
    assert plan_passes([7], overhead=0) == [[0]]
    assert plan_passes([]) == []


def test_plan_is_a_partition_for_many_widths():
    widths = [int(w) for w in torch.randint(1, 200, (23,), generator=torch.Generator().manual_seed(0))]
    for overhead in (0, 16, 64, 10_000):
        check_partition(plan_passes(widths, overhead), len(widths))


# -- pass_mask -------------------------------------------------------------------------------------------

def test_causal_mask_respects_positions_keys_and_padding():
    # Row 0: queries at columns 3, 4 over 5 keys (a cached prefix); row 1: columns 0..3, 4 keys.
    works, pos, n, K = works_and_positions([(3, 2, 5), (0, 4, 4)])
    m = pass_mask(works, pos, n, K, "causal", None, CPU)
    assert m.shape == (2, 1, 4, 5)
    m = m[:, 0].int().tolist()
    assert m[0][:2] == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert m[0][2:] == [[1, 0, 0, 0, 0]] * 2  # padded queries: key 0 only
    assert m[1] == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]  # key 4 is not row 1's


def test_block_causal_mask_sees_its_own_and_earlier_blocks_only():
    works, pos, n, K = works_and_positions([(0, 6, 6), (2, 2, 4)])
    m = pass_mask(works, pos, n, K, "block-causal", 2, CPU)[:, 0].int().tolist()
    assert m[0] == [[1, 1, 0, 0, 0, 0]] * 2 + [[1, 1, 1, 1, 0, 0]] * 2 + [[1, 1, 1, 1, 1, 1]] * 2
    assert m[1][:2] == [[1, 1, 1, 1, 0, 0]] * 2  # keys stop at row 1's 4
    for q in range(2, 6):  # padded queries still see key 0, and nothing past the row's keys
        assert m[1][q][0] == 1 and m[1][q][4:] == [0, 0]


def test_bidirectional_mask_is_none_only_when_every_row_attends_every_key():
    works, pos, n, K = works_and_positions([(0, 6, 6), (0, 3, 6), (2, 2, 6)])
    assert pass_mask(works, pos, n, K, "bidirectional", None, CPU) is None
    works, pos, n, K = works_and_positions([(0, 6, 6), (0, 3, 3)])
    m = pass_mask(works, pos, n, K, "bidirectional", None, CPU)
    assert m is not None
    m = m[:, 0].int()
    assert m[0].all()
    assert m[1, :3].tolist() == [[1, 1, 1, 0, 0, 0]] * 3  # row 1 has 3 keys: columns 3..5 are someone else's
    assert (m[1, :, 3:] == 0).all() and (m[1, :, 0] == 1).all()


def test_an_explicit_work_mask_is_used_as_given():
    own = strided_mask(2, 2, 2)  # (4, 6): 2 cached keys, 2 causal tokens, 2 slots that see all
    explicit = Work(torch.full((4,), 5), 2, 6, mask=own)
    plain = Work(torch.full((8,), 5), 0, 8)
    works = [explicit, plain]
    pos = torch.zeros(2, 8, dtype=torch.long)
    pos[0, :4], pos[1] = explicit.columns, plain.columns
    for attention in ("causal", "bidirectional"):
        m = pass_mask(works, pos, [4, 8], 8, attention, None, CPU)
        assert m is not None
        assert torch.equal(m[0, 0, :4, :6], own)
        assert not m[0, 0, :4, 6:].any()  # beyond its keys: never
        assert m[0, 0, 4:, 0].all()  # its padded queries see key 0
    m = pass_mask(works, pos, [4, 8], 8, "causal", None, CPU)
    assert torch.equal(m[1, 0], torch.ones(8, 8, dtype=torch.bool).tril())  # the other row keeps the model's rule


# -- build_pass ------------------------------------------------------------------------------------------

class Tiny(nn.Module):
    """What the KV pool reads of a model: its config, and a parameter for device and dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(n_layers=2, n_kv_heads=1, head_dim=4)


def test_build_pass_pads_ids_and_places_queries_at_their_columns():
    pool = PagedKVCache(Tiny(), 64)
    tables = [pool.allocate(10), pool.allocate(6)]
    works = [Work(torch.tensor([7, 8]), 4, 6), Work(torch.tensor([3, 4, 5, 6]), 0, 4)]
    p = build_pass(works, tables, pool, "causal", None, pad_id=0)
    assert p.ids.tolist() == [[7, 8, 0, 0], [3, 4, 5, 6]]
    assert p.positions[0, :2].tolist() == [4, 5] and p.positions[1].tolist() == [0, 1, 2, 3]
    assert p.mask.shape == (2, 1, 4, 6)
    assert p.view.write.tolist() == tables[0][4:6].tolist() + tables[1][:4].tolist()  # padding is never written


def test_scattered_columns_are_the_positions():
    pool = PagedKVCache(Tiny(), 32)
    tables = [pool.allocate(12)]
    cols = torch.tensor([2, 5, 6, 11])
    p = build_pass([Work(torch.tensor([1, 2, 3, 4]), 2, 12, cols=cols)], tables, pool, "bidirectional", None, 0)
    assert p.positions[0].tolist() == [2, 5, 6, 11] and p.mask is None
    assert p.view.write.tolist() == tables[0][cols].tolist()


# -- PagedKVCache ----------------------------------------------------------------------------------------

def test_pages_are_allocated_whole_returned_on_release_and_never_overcommitted():
    pool = PagedKVCache(Tiny(), 4 * PAGE)
    assert pool.free_tokens == 4 * PAGE
    a = pool.allocate(PAGE + 4)  # two pages
    assert a.numel() == PAGE + 4 and pool.free_tokens == 2 * PAGE
    b = pool.allocate(PAGE)
    assert pool.free_tokens == PAGE
    assert not set(a.tolist()) & set(b.tolist())  # no slot is shared
    assert all(0 <= s < 4 * PAGE for s in a.tolist() + b.tolist())
    with pytest.raises(RuntimeError, match="free token slots"):
        pool.allocate(PAGE + 1)
    assert pool.free_tokens == PAGE  # a refusal takes nothing
    pool.release(a)
    assert pool.free_tokens == 3 * PAGE
    c = pool.allocate(3 * PAGE)  # a's pages serve the next request
    assert set(a.tolist()) <= set(c.tolist())
    assert not set(b.tolist()) & set(c.tolist()) and pool.free_tokens == 0
    pool.release(b)
    pool.release(c)
    assert pool.free_tokens == 4 * PAGE and sorted(pool.free) == [0, 1, 2, 3]
    with pytest.raises(RuntimeError):
        pool.allocate(4 * PAGE + 1)
