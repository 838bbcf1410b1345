"""Owns the engine's tensors: every running request's row, the KV storage, the batched forward passes.

The runner only batches. Each step it asks every row for its work (unmask/decode/rows/base.py), groups
the work of rows that run the same model into as few passes as the widths allow (engine/packing.py),
runs them, and hands each row its own logits; it asks again until no row has work (a verifier row asks
a second time, for its AR model), then collects each row's progress. It knows no decoding rule: rows of
any decoder, at any stage, step together, and each gets the tokens it would get alone.

A pass that fails (a request's fault, e.g. a position past the context) is run again one row at a
time before any row has taken its logits, so the failure stays with its request: every other row takes
exactly the logits it would have had, and the failing one is reported as an error.
"""
from __future__ import annotations

import torch

from unmask.decode.rows.base import MAIN, Progress, Row, Work
from unmask.engine.packing import build_pass, plan_passes
from unmask.models.paged_cache import PagedKVCache


class RowError(Exception):
    """A request failed inside a step; the others carried on."""


class Runner:
    def __init__(self, model: torch.nn.Module, capacity_tokens: int,
                 verifiers: dict[str, torch.nn.Module] | None = None) -> None:
        self.models: dict[str, torch.nn.Module] = {MAIN: model, **(verifiers or {})}
        self.capacity = capacity_tokens
        self.pools: dict[str, PagedKVCache] = {}  # made on first use: a server without verifier rows holds none
        self.rows: dict[str, Row] = {}
        self.tables: dict[str, dict[str, torch.Tensor]] = {}  # request -> model -> slot of each column
        self.passes = 0  # forward passes of the main model
        self.verifier_passes = 0

    def add_model(self, name: str, model: torch.nn.Module) -> None:
        self.models.setdefault(name, model)

    def pool(self, name: str) -> PagedKVCache:
        if name not in self.pools:
            self.pools[name] = PagedKVCache(self.models[name], self.capacity)
        return self.pools[name]

    # -- request lifecycle ---------------------------------------------------------------------------
    def admit(self, request_id: str, row: Row) -> None:
        """Reserve the row's KV slots (the scheduler made sure they fit) and start stepping it."""
        tables = {}
        try:
            for name, columns in row.footprint.items():
                tables[name] = self.pool(name).allocate(columns)
        except Exception:
            for name, t in tables.items():
                self.pools[name].release(t)
            raise
        self.rows[request_id], self.tables[request_id] = row, tables

    def release(self, request_id: str) -> None:
        self.rows.pop(request_id, None)
        for name, table in self.tables.pop(request_id, {}).items():
            self.pools[name].release(table)

    # -- one engine step ----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, request_ids: list[str]) -> dict[str, Progress | RowError]:
        """Advance every listed row by one step; a row that failed maps to its RowError."""
        live = [r for r in request_ids if r in self.rows]
        failed: dict[str, RowError] = {}
        while True:
            works: dict[str, Work] = {}
            for rid in live:
                if rid in failed:
                    continue
                try:
                    w = self.rows[rid].work()
                except Exception as err:  # noqa: BLE001 - that request's fault, reported to it
                    failed[rid] = RowError(f"{type(err).__name__}: {err}")
                    continue
                if w is not None:
                    works[rid] = w
            if not works:
                break
            by_model: dict[str, list[str]] = {}
            for rid, w in works.items():
                by_model.setdefault(w.model, []).append(rid)
            for name, rids in by_model.items():
                for group in plan_passes([works[r].ids.numel() for r in rids]):
                    self.run_group(name, [rids[i] for i in group], works, failed)
        out: dict[str, Progress | RowError] = dict(failed)
        for rid in live:
            if rid not in failed:
                out[rid] = self.rows[rid].end_step()
        return out

    def run_group(self, name: str, rids: list[str], works: dict[str, Work], failed: dict[str, RowError]) -> None:
        try:
            logits = self.forward(name, [works[r] for r in rids], rids)
        except Exception as err:  # noqa: BLE001 - find whose work it was: run each alone
            if len(rids) == 1:
                failed[rids[0]] = RowError(f"{type(err).__name__}: {err}")
                return
            for rid in rids:
                self.run_group(name, [rid], works, failed)
            return
        for rid, lg in zip(rids, logits):
            try:
                self.rows[rid].take(lg)
            except Exception as err:  # noqa: BLE001 - that request's fault, reported to it
                failed[rid] = RowError(f"{type(err).__name__}: {err}")

    def forward(self, name: str, works: list[Work], rids: list[str]) -> list[torch.Tensor]:
        """One pass of model `name` over `works`; each row's logits `# (Lq_i, V)`."""
        model = self.models[name]
        cfg = model.config
        p = build_pass(works, [self.tables[r][name] for r in rids], self.pool(name), cfg.attention,
                       cfg.block_size, model.pad_token_id)
        extra = {} if p.flow is None else {"flow": p.flow}  # a continuous model's noisy inputs
        logits = model(p.ids, p.positions, kv=p.view, attn_mask=p.mask, **extra)  # (B, Lq, V)
        if name == MAIN:
            self.passes += 1
        else:
            self.verifier_passes += 1
        return [logits[i, :w.ids.numel()] for i, w in enumerate(works)]
