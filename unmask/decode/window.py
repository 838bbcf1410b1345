"""The logits one forward pass computed for a row, and the columns they score."""
from __future__ import annotations

import torch


class Window:
    """logits `# (W, V)` of a pass that ran columns [start, start+W) (or the ascending `cols`), each scoring
    its own column, or the next one when `shift` (Dream: the last column then scores nothing)."""

    def __init__(self, logits: torch.Tensor, start: int, cols: torch.Tensor | None, total: int, shift: bool) -> None:
        self.shift = int(shift)
        if cols is not None and shift:
            keep = cols + 1 < total
            logits, cols = logits[keep], cols[keep]
        elif cols is None and shift and start + logits.shape[0] >= total:
            logits = logits[:total - 1 - start]
        self.logits, self.cols, self.first = logits, None if cols is None else cols + self.shift, start + self.shift

    @property
    def targets(self) -> torch.Tensor:
        """`# (W,)` the column each logit row scores."""
        if self.cols is not None:
            return self.cols
        return torch.arange(self.first, self.first + self.logits.shape[0], device=self.logits.device)

    def at(self, lo: int, hi: int) -> torch.Tensor:
        """Logits for columns [lo, hi) `# (hi-lo, V)`; a column outside the window gets a neighbour's
        (rules only read masked columns, and every masked column a step needs is in its window)."""
        if self.cols is None:
            if self.first <= lo:
                assert hi - self.first <= self.logits.shape[0], "the window misses the block"
                return self.logits[lo - self.first:hi - self.first]
            # a shifted model's block starting at column 0 (or just after the cache): nothing scores its first
            # column, which is never masked (a prompt token, or filled autoregressively)
            assert lo == self.first - 1, "the window misses the block"
            return torch.cat([self.logits[:1], self.logits[:hi - self.first]])
        idx = torch.searchsorted(self.cols, torch.arange(lo, hi, device=self.cols.device))
        return self.logits[idx.clamp(max=self.cols.numel() - 1)]
