"""A static-shape key/value cache, addressed by sequence slot.

Slot i holds the keys and values of the token at sequence index i, so one object
serves AR decoding (append one slot per step), prefix/dual caches (rewrite the slots
of the block being denoised) and exact block caches (commit a block's slots once).
`length` is the extent of filled slots: attention reads slots [0, length).
Writes go to a contiguous run of slots (`start` an int) or to any set of slots
(`start` a 1-D LongTensor, shared by the batch): delayed caches refresh scattered positions.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
                 *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (n_layers, batch_size, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.positions = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)  # RoPE positions
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)  # False: padding
        self.max_len = max_len
        self.length = 0

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch_size: int, max_len: int) -> "KVCache":
        cfg = model.config
        p = next(model.parameters())
        return cls(cfg.n_layers, batch_size, cfg.n_kv_heads, max_len, cfg.head_dim, dtype=p.dtype, device=p.device)

    def check_room(self, start: int, n: int) -> None:
        if start < 0 or start + n > self.max_len:
            raise ValueError(f"cache holds {self.max_len} slots; cannot write slots {start}..{start + n - 1}")

    def write_meta(self, start: int | torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> int:
        """Record positions/validity of the written slots; return the extent attention reads."""
        n = positions.shape[1]
        if isinstance(start, torch.Tensor):
            if start.shape != (n,):
                raise ValueError(f"{n} tokens need {n} slots, got slots of shape {tuple(start.shape)}")
            self.check_room(int(start.min()), int(start.max()) - int(start.min()) + 1)
            self.positions[:, start] = positions
            self.valid[:, start] = valid
            return max(self.length, int(start.max()) + 1)
        self.check_room(start, n)
        self.positions[:, start:start + n] = positions
        self.valid[:, start:start + n] = valid
        return max(self.length, start + n)

    def update(self, layer: int, start: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor, extent: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v `# (B, Hkv, n, D)` into their slots; return slots [0, extent)."""
        if isinstance(start, torch.Tensor):
            self.k[layer][:, :, start] = k
            self.v[layer][:, :, start] = v
        else:
            n = k.shape[2]
            self.k[layer, :, :, start:start + n] = k
            self.v[layer, :, :, start:start + n] = v
        return self.k[layer, :, :, :extent], self.v[layer, :, :, :extent]

    def trim(self, length: int) -> None:
        """Forget every slot from `length` on (they will be written again before being read)."""
        if not 0 <= length <= self.max_len:
            raise ValueError(f"cannot trim a {self.max_len}-slot cache to {length}")
        self.length = length
