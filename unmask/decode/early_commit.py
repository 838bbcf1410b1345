"""Prophet early commit: once the model's answer has settled, commit every remaining mask at once.

The signal is the gap between the top-1 and top-2 logits, averaged over the masked answer positions a
step scored. A row commits all of them, each to its proposal, when the gap clears the threshold of its
decoding stage: 7.5 while under a third of its answer is decoded, 5.0 under two thirds, then 2.5
(the Prophet paper's defaults). It sits on top of any step rule and cache; rows decide separately.
"""
from __future__ import annotations

import torch

DEFAULT_GAPS = (7.5, 5.0, 2.5)


class EarlyCommit:
    def __init__(self, gaps: tuple[float, float, float] = DEFAULT_GAPS) -> None:
        if len(gaps) != 3:
            raise ValueError(f"early commit takes three stage thresholds, not {len(gaps)}")
        self.gaps = torch.tensor(gaps, dtype=torch.float64)

    def fires(self, logits: torch.Tensor, masked: torch.Tensor, progress: torch.Tensor) -> torch.Tensor:
        """Rows that commit now `# (B,)`.

        logits `# (B, W, V)` of the scored answer positions; masked `# (B, W)`: which are still masks;
        progress `# (B,)`: the fraction of each row's answer already decoded.
        """
        top2 = logits.to(torch.float64).topk(2, dim=-1).values  # (B, W, 2)
        gap = top2[..., 0] - top2[..., 1]
        count = masked.sum(dim=-1)
        mean_gap = (gap * masked).sum(dim=-1) / count.clamp(min=1)
        stage = (progress * 3).long().clamp(max=2)  # thirds of the answer
        return (count > 0) & (mean_gap >= self.gaps[stage])
