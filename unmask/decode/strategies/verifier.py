"""AR-verifier guided diffusion: a small causal model vets what a parallel step proposes.

Committing many tokens per step risks errors no single position can see (a number written twice,
one dropped). Each step, the rule proposes commits as `threshold` does; a small AR model with the same
tokenizer then reads the block's draft (committed tokens, and the dLLM's proposal at every masked
position) in one causal forward pass, batched with the other rows' in the same engine step, and each
proposed commit the verifier finds unlikely goes back to [MASK] to be decoded again later:
  rule "prob":   reject a commit whose verifier probability, given the draft before it, is below `accept`;
  rule "first":  reject from the row's first such commit onward (later tokens were read after an error).
A row whose every commit is rejected still makes progress without accepting a rejected token: it
commits, at its first masked position (whose prefix is all final), the verifier's own choice.
"""
from __future__ import annotations

import functools

import torch

from unmask.decode.strategies.threshold import Threshold

RULES = ("prob", "first")


@functools.lru_cache(maxsize=4)
def load_verifier(name: str, device: str = "cpu") -> torch.nn.Module:
    from unmask.models.checkpoints import load_model

    return load_model(name, device=device)


def check_pair(model: torch.nn.Module, verifier: torch.nn.Module) -> None:
    """ValueError unless `verifier` is an AR model that reads `model`'s tokens."""
    if verifier.config.kind != "ar":
        raise ValueError(f"the verifier must be an autoregressive model, not {verifier.config.kind}")
    same = (verifier.config.vocab_size == model.config.vocab_size
            and verifier.eos_token_id == model.eos_token_id and verifier.pad_token_id == model.pad_token_id)
    if not same:
        raise ValueError("the verifier must share the model's tokenizer (vocabulary and special ids)")


class Verifier(Threshold):
    name = "verifier"
    uses_verifier = True

    def __init__(self, threshold: float = 0.7, accept: float = 0.2, verifier_rule: str = "prob",
                 confidence: str = "prob") -> None:
        super().__init__(threshold, confidence)
        if verifier_rule not in RULES:
            raise ValueError(f"unknown verifier rule {verifier_rule!r}; known rules: {', '.join(RULES)}")
        if not 0 < accept < 1:
            raise ValueError(f"accept must be between 0 and 1, not {accept}")
        self.accept, self.rule = accept, verifier_rule

    def review(self, scores: torch.Tensor, x0: torch.Tensor, confidence: torch.Tensor, commit: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(commit, x0) to apply, given the verifier's next-token logits `# (B, Lb, V)` at each block position
        (row j read the draft up to position j-1), the proposals x0 and commits `# (B, Lb)`, and the
        confidences (-inf where the position was not masked)."""
        scores = scores.float()
        p = torch.softmax(scores, dim=-1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)  # (B, Lb)
        masked = torch.isfinite(confidence)
        reject = commit & (p < self.accept)
        if self.rule == "first":
            reject = commit & (reject.long().cumsum(dim=-1) > 0)
        keep = commit & ~reject
        starved = masked.any(dim=-1) & ~keep.any(dim=-1)  # (B,)
        if starved.any():
            first = masked.long().argmax(dim=-1)  # (B,) first masked position: its prefix is final
            rows = starved.nonzero().squeeze(1)
            x0 = x0.clone()
            x0[rows, first[rows]] = scores[rows, first[rows]].argmax(dim=-1)
            keep[rows, first[rows]] = True
        return keep, x0
