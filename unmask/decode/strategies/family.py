"""The published block-diffusion families' own step rules, on their own block grid (rows/aligned.py).

sdar         SDAR's `block_diffusion_generate` remasking: `dynamic` (low_confidence_dynamic: every mask
             above the threshold if there are at least the step's quota of them, else the quota's most
             confident), `static` (the quota's most confident) or `sequential` (the quota's left-most masks).
llada2       LLaDA2.0's `generate()`: SDAR's `dynamic` rule (its only one).
fast_dllm_v2 Fast-dLLM v2's sub-block rule: the block is decoded one sub-block after another; each step
             commits the current sub-block's masks above the threshold, and always its most confident one.

The quota of step s is `get_num_transfer_tokens(block length, steps)[s]`: the block length split over
the steps, remainder first; a block's prompt positions count in its length, as in both families' code.
Confidence is the proposal's probability under the distribution it was drawn from: softmax of the
logits / temperature after top-k / top-p (at temperature 0 the plain softmax), as the families' samplers
return it; thresholds are strict (`>`), as in their code.
"""
from __future__ import annotations

import torch

from unmask.decode.sampling import filter_logits
from unmask.decode.strategies.base import Strategy, top_k_per_row


def block_quotas(length: int, steps: int) -> list[int]:
    """Tokens each step commits at least: `length` over `steps`, the remainder to the first steps."""
    base, extra = divmod(length, steps)
    return [base + (i < extra) for i in range(steps)]


class FamilyRule(Strategy):
    """Shared: the family samplers' confidence (probability after temperature and filtering)."""

    def __init__(self, threshold: float, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None) -> None:
        super().__init__("prob")
        self.threshold, self.temperature, self.top_k, self.top_p = threshold, temperature, top_k, top_p

    def confidence(self, logits: torch.Tensor, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        scaled = logits.float() / self.temperature if self.temperature > 0 else logits.float()
        probs = torch.softmax(filter_logits(scaled, self.top_k, self.top_p), dim=-1)  # (B, Lb, V)
        return probs.gather(-1, x0[..., None])[..., 0]


class BlockQuota(FamilyRule):
    """SDAR's remasking rules and LLaDA2's (which is SDAR's `dynamic`)."""

    name = "sdar"

    def __init__(self, threshold: float, remasking: str = "dynamic", block_steps: int | None = None,
                 temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None) -> None:
        super().__init__(threshold, temperature, top_k, top_p)
        self.remasking, self.block_steps = remasking, block_steps

    def begin_block(self, masked: torch.Tensor, steps: int) -> None:
        length = masked.shape[-1]
        self.quotas = block_quotas(length, min(self.block_steps or length, length))

    def select(self, step: int, confidence: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        # Never more than the masks left: SDAR's topk would then also pick committed positions and overwrite
        # them with fresh proposals (LLaDA2's code clamps, as here). Past the schedule: finish the block.
        quota = masked.sum(dim=-1).clamp(max=self.quotas[step] if step < len(self.quotas) else masked.shape[-1])
        if self.remasking == "sequential":
            first = masked.long().argmax(dim=-1, keepdim=True)  # (B, 1): the left-most mask
            at = torch.arange(masked.shape[-1], device=masked.device)[None]
            return (at >= first) & (at < first + quota[:, None])
        top = top_k_per_row(confidence, quota)
        if self.remasking == "static":
            return top
        above = (confidence > self.threshold) & masked
        return torch.where((above.sum(-1) >= quota)[:, None], above, top)


class SubBlocks(FamilyRule):
    """Fast-dLLM v2: sub-block by sub-block, every mask above the threshold plus the most confident one."""

    name = "fast_dllm_v2"

    def __init__(self, threshold: float, sub_block: int, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None) -> None:
        super().__init__(threshold, temperature, top_k, top_p)
        self.sub_block = sub_block

    def select(self, step: int, confidence: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        L = masked.shape[-1]
        # (Lb,) each position's sub-block; a last one that does not fit joins the one before (their code's
        # last sub-block runs to the block's end)
        sub = (torch.arange(L, device=masked.device) // self.sub_block).clamp(max=max(L // self.sub_block - 1, 0))
        open_sub = torch.where(masked, sub[None], L).min(dim=-1, keepdim=True).values  # (B, 1): first with masks
        current = (sub[None] == open_sub) & masked
        conf = confidence.masked_fill(~current, float("-inf"))
        chosen = (conf > self.threshold) & current
        best = conf.argmax(dim=-1, keepdim=True)  # first index on ties, as torch.argmax in their code
        return chosen.scatter(-1, best, True) & current
