"""The engine's key/value storage: one pool of fixed-size pages, allocated once, shared by every request.

Why pages (nano-vllm, vLLM) rather than a static slot per request (gpt-fast): the pool is sized by the
engine's token budget, not by running requests x the model's context, so a server can hold many short
requests or a few long ones in the same memory, and a request that leaves frees its pages for anyone
without fragmentation. A request reserves the pages for its whole footprint when it is admitted
(diffusion writes its whole canvas at once, so there is nothing to grow into), and column c of the
request lives at `table[c]`, a slot of the pool.

A forward pass over several requests writes each query's keys and values to its slot and reads each
request's slots [0, keys) through one gather per layer: nothing is rebuilt or concatenated per step.
"""
from __future__ import annotations

import torch

PAGE = 16  # tokens per page


def first_parameter(model: torch.nn.Module) -> torch.Tensor:
    """Where and in what dtype the model computes (a parameterless wrapper: float32 on the CPU)."""
    return next(model.parameters(), torch.empty(0))


class PagedKVCache:
    def __init__(self, model: torch.nn.Module, capacity_tokens: int, page: int = PAGE) -> None:
        cfg = model.config
        p = first_parameter(model)
        self.page = page
        self.n_pages = max(1, -(-capacity_tokens // page))
        shape = (cfg.n_layers, self.n_pages * page, cfg.n_kv_heads, cfg.head_dim)
        # Zeros, not empty: a padded read lands on some slot, and masked-out keys must still be finite.
        self.k = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.v = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.device = p.device
        self.free = list(range(self.n_pages - 1, -1, -1))
        self.offsets = torch.arange(page, device=p.device)

    @staticmethod
    def pages_needed(columns: int, page: int = PAGE) -> int:
        return -(-columns // page)

    @property
    def free_tokens(self) -> int:
        return len(self.free) * self.page

    def allocate(self, columns: int) -> torch.Tensor:
        """Reserve room for `columns` columns; returns each column's slot `# (columns,)`."""
        n = self.pages_needed(columns, self.page)
        if n > len(self.free):
            raise RuntimeError(f"the KV cache has {self.free_tokens} free token slots, not {columns}")
        pages = torch.tensor([self.free.pop() for _ in range(n)], device=self.device)
        return (pages[:, None] * self.page + self.offsets).flatten()[:columns]

    def release(self, table: torch.Tensor) -> None:
        self.free += (table[::self.page] // self.page).tolist()

    def view(self, tables: list[torch.Tensor], columns: list[torch.Tensor], keys: list[int], width: int
             ) -> "PassView":
        """One pass: row i's queries sit at `columns[i]` (padded to `width`) and read its slots [0, keys[i])."""
        return PassView(self, tables, columns, keys, width)


class PassView:
    """What one forward pass writes and reads: `update` has the signature `Attention` calls on a KVCache."""

    def __init__(self, pool: PagedKVCache, tables: list[torch.Tensor], columns: list[torch.Tensor],
                 keys: list[int], width: int) -> None:
        dev = pool.device
        self.pool = pool
        n = [c.numel() for c in columns]
        self.valid = torch.arange(width, device=dev)[None, :] < torch.tensor(n, device=dev)[:, None]  # (B, Lq)
        self.write = torch.cat([t[c] for t, c in zip(tables, columns)])  # (N,) the valid queries' slots
        # Every row runs all it reads, from column 0: its new keys are all it needs (no gather).
        self.fresh = all(k == m and (m == 0 or int(c[0]) == 0 and int(c[-1]) == m - 1)
                         for k, m, c in zip(keys, n, columns)) and max(keys) == width
        K = max(keys)
        self.read = None if self.fresh else torch.stack(
            [t[torch.arange(K, device=dev).clamp(max=t.numel() - 1)] for t in tables])  # (B, K)

    def update(self, layer: int, start: object, k: torch.Tensor, v: torch.Tensor, extent: object
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this pass's keys/values `# (B, Hkv, Lq, D)`; return what each row attends `# (B, Hkv, K, D)`."""
        self.pool.k[layer][self.write] = k.transpose(1, 2)[self.valid]
        self.pool.v[layer][self.write] = v.transpose(1, 2)[self.valid]
        if self.fresh:
            return k, v
        return self.pool.k[layer][self.read].transpose(1, 2), self.pool.v[layer][self.read].transpose(1, 2)
