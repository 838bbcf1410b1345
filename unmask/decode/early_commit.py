"""Prophet early commit: once the model's answer has settled, commit every remaining mask at once.

The signal is the gap between the top-1 and top-2 logits of the masked answer positions a step
scored. A row commits all of them, each to its proposal, when the signal clears the threshold of its
decoding stage: 7.5 while under a third of its answer is decoded, 5.0 under two thirds, then 2.5
(the Prophet paper's defaults). It sits on top of any step rule and cache; rows decide separately.

How the positions' gaps are pooled into one signal:
mean  Prophet's rule: the average gap. Easy positions (an EOS tail) can hide a few unsure ones.
min   every masked position must clear the threshold itself: the answer commits only when none of
      its remaining tokens is in doubt (a stricter rule of ours; calibrate its gap, see bench.calibrate).
"""
from __future__ import annotations

import torch

DEFAULT_GAPS = (7.5, 5.0, 2.5)
POOLS = ("mean", "min")


class EarlyCommit:
    def __init__(self, gaps: tuple[float, ...] = DEFAULT_GAPS, pool: str = "mean") -> None:
        if len(gaps) == 1:
            gaps = tuple(gaps) * 3  # one gap for every stage
        if len(gaps) != 3:
            raise ValueError(f"early commit takes one gap or three stage thresholds, not {len(gaps)}")
        if pool not in POOLS:
            raise ValueError(f"unknown early-commit pooling {pool!r}; known: {', '.join(POOLS)}")
        self.gaps = torch.tensor(gaps, dtype=torch.float64)
        self.pool = pool

    def fires(self, logits: torch.Tensor, masked: torch.Tensor, progress: torch.Tensor) -> torch.Tensor:
        """Rows that commit now `# (B,)`.

        logits `# (B, W, V)` of the scored answer positions; masked `# (B, W)`: which are still masks;
        progress `# (B,)`: the fraction of each row's answer already decoded.
        """
        top2 = logits.to(torch.float64).topk(2, dim=-1).values  # (B, W, 2)
        gap = top2[..., 0] - top2[..., 1]  # (B, W)
        count = masked.sum(dim=-1)
        if self.pool == "min":
            signal = gap.masked_fill(~masked, float("inf")).min(dim=-1).values
        else:
            signal = (gap * masked).sum(dim=-1) / count.clamp(min=1)
        stage = (progress * 3).long().clamp(max=2)  # thirds of the answer
        return (count > 0) & (signal >= self.gaps[stage])
