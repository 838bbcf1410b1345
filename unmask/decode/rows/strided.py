"""Introspective strided decoding (I-DLM) of one request: a causal model drafts ahead and checks its drafts.

The model is causal over committed tokens and was also trained (objective "isd") to fill N [MASK]
slots placed after them. Each forward pass reads [uncached committed tokens, the previous pass's
drafts, N masks] with a causal mask over the first two parts (the masks see everything):
- the causal logits verify the drafts: greedy accepts the longest prefix that equals the model's own
  argmax; sampling accepts draft d with probability min(1, p(d)/q(d)) (p: causal, q: the draft's
  distribution) and resamples from max(p - q, 0) on the first rejection;
- one more token always comes from the causal logits after the accepted prefix (the correction or
  a bonus), so every pass commits at least one token;
- when every draft was accepted, the mask slots after the bonus become the next drafts.
Accepted tokens are exactly what the causal model itself would produce, so greedy output equals
the same model's AR greedy output, in fewer forward passes. Committed keys/values stay in the row's
slot; drafts and masks are written past them and overwritten by the next pass. Rows that accepted
different numbers of drafts run different widths, and still share passes (I-DLM's stationary batch).
"""
from __future__ import annotations

import torch

from unmask.decode.rows.base import MAIN, Row, Work
from unmask.decode.sampling import filter_logits
from unmask.decode.spec import Decoding


def pass_mask(cached: int, n_causal: int, n_masks: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """`# (Q, cached+Q)`: all cached keys; causal among the first n_causal new tokens; masks see all."""
    Q = n_causal + n_masks
    new = torch.ones(Q, Q, dtype=torch.bool, device=device).tril()
    new[n_causal:, :] = True
    return torch.cat([torch.ones(Q, cached, dtype=torch.bool, device=device), new], dim=1)


class StridedRow(Row):
    def __init__(self, model: torch.nn.Module, prompt: torch.Tensor, d: Decoding,
                 generator: torch.Generator | None) -> None:
        super().__init__(d.max_new_tokens, model.eos_token_id, d.stop_at_eos)
        self.N, self.mask_id = model.config.ahead, model.mask_token_id
        self.context = model.config.max_seq_len
        self.device = prompt.device
        self.committed = prompt.tolist()
        self.P = prompt.numel()
        self.cached = 0  # slot columns [0, cached) hold final keys and values
        self.drafts: list[int] = []
        self.draft_q: list[torch.Tensor] = []  # the draft distributions (sampling)
        self.temperature, self.generator = d.temperature, generator
        self.top = (d.top_k, d.top_p)  # the same filter on the drafts' and the verifier's distributions
        self.footprint = {MAIN: min(self.context, len(self.committed) + d.max_new_tokens + 2 * self.N + 1)}
        self.fresh = 0
        self.busy = False

    def work(self) -> Work | None:
        if self.done or self.busy:
            return None
        fresh = self.committed[self.cached:] + self.drafts
        slots = max(0, min(self.N, self.context - self.cached - len(fresh)))  # no slot past the model's context
        self.fresh, self.slots = len(fresh), slots
        ids = torch.tensor(fresh + [self.mask_id] * slots, device=self.device)  # (Q,)
        return Work(ids, self.cached, self.cached + ids.numel(),
                    mask=pass_mask(self.cached, len(fresh), slots, self.device))

    def take(self, logits: torch.Tensor) -> None:
        self.passes += 1
        self.busy = True
        first = self.fresh - len(self.drafts) - 1  # the row of the last committed token: it predicts drafts[0]
        causal = logits[first:first + len(self.drafts) + 1]  # (K+1, V): row i predicts the token after drafts[:i]
        accepted, nxt = verify(causal, self.drafts, self.draft_q, self.temperature, self.generator, self.top)
        new = self.drafts[:accepted] + [nxt]
        base = len(self.committed) - self.P
        self.note(list(range(base, base + len(new))), torch.tensor(new, device=logits.device), causal[:len(new)])
        self.cached = len(self.committed) + accepted  # the committed tokens and the accepted drafts keep their keys
        self.committed += new
        if accepted == len(self.drafts):  # all drafts held: the slots after the bonus token draft the next ones
            ahead = logits[self.fresh + 1:]  # (slots-1, V); slot 0 sits where the bonus token now is
            self.drafts, self.draft_q = propose(ahead, self.temperature, self.generator, self.top)
        else:
            self.drafts, self.draft_q = [], []
        self.extend(new[:self.max_new_tokens - len(self.final)])

    def next_step(self) -> None:
        self.busy = False


Top = tuple[int | None, float | None]  # (top_k, top_p)


def distribution(logits: torch.Tensor, temperature: float, top: Top = (None, None)) -> torch.Tensor:
    """What is sampled: softmax(logits / temperature), restricted by top-k / top-p. Filtering the drafts' q
    and the verifier's p alike keeps speculative sampling exact for the filtered p."""
    return torch.softmax(filter_logits(logits.float() / temperature, *top), dim=-1)


def propose(slots: torch.Tensor, temperature: float, generator: torch.Generator | None, top: Top = (None, None)
            ) -> tuple[list[int], list[torch.Tensor]]:
    if temperature == 0:
        return slots.argmax(dim=-1).tolist(), []
    q = distribution(slots, temperature, top)  # (N-1, V)
    return torch.multinomial(q, 1, generator=generator).squeeze(1).tolist(), list(q)


def verify(causal: torch.Tensor, drafts: list[int], draft_q: list[torch.Tensor], temperature: float,
           generator: torch.Generator | None, top: Top = (None, None)) -> tuple[int, int]:
    """(number of drafts accepted, the token after them) from the causal rows `# (K+1, V)`."""
    if temperature == 0:
        greedy = causal.argmax(dim=-1).tolist()
        k = 0
        while k < len(drafts) and drafts[k] == greedy[k]:
            k += 1
        return k, greedy[k]
    p = distribution(causal, temperature, top)  # (K+1, V)
    for k, d in enumerate(drafts):
        ratio = float(p[k, d] / draft_q[k][d].clamp(min=1e-12))
        u = torch.rand(1, generator=generator, device=p.device)
        if float(u) >= min(1.0, ratio):
            residual = (p[k] - draft_q[k]).clamp(min=0)
            residual = residual / residual.sum() if float(residual.sum()) > 0 else p[k]
            return k, int(torch.multinomial(residual, 1, generator=generator))
    return len(drafts), int(torch.multinomial(p[len(drafts)], 1, generator=generator))
