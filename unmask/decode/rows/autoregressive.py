"""Left-to-right decoding of one request by a causal model: greedy or top-k/top-p sampling.

With the exact cache (the default) a pass runs only the newest token against the keys and values of
everything before it, kept in the row's slot; with cache "none" every pass re-runs the whole sequence
(the slow reference the cache is tested against).
"""
from __future__ import annotations

import torch

from unmask.decode.rows.base import MAIN, Row, Work
from unmask.decode.sampling import sample_next
from unmask.decode.spec import Decoding


class ARRow(Row):
    def __init__(self, model: torch.nn.Module, prompt: torch.Tensor, d: Decoding,
                 generator: torch.Generator | None) -> None:
        super().__init__(d.max_new_tokens, model.eos_token_id, d.stop_at_eos)
        self.grown = torch.empty(prompt.numel() + d.max_new_tokens + 1, dtype=torch.long, device=prompt.device)
        self.grown[:prompt.numel()] = prompt
        self.length = self.P = prompt.numel()
        self.cached = 0  # slot columns [0, cached) hold keys and values (exact cache)
        self.use_cache = d.cache == "exact"
        self.temperature, self.top_k, self.top_p, self.generator = d.temperature, d.top_k, d.top_p, generator
        self.footprint = {MAIN: prompt.numel() + d.max_new_tokens}
        self.busy = False

    def work(self) -> Work | None:
        if self.done or self.busy:
            return None
        start = self.cached if self.use_cache else 0
        return Work(self.grown[start:self.length], start, self.length)

    def take(self, logits: torch.Tensor) -> None:
        self.passes += 1
        self.busy = True
        self.cached = self.length
        nxt = sample_next(logits[-1:], temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                          generator=self.generator)  # (1,)
        token = int(nxt)
        self.note([self.length - self.P], nxt, logits[-1:])
        self.grown[self.length] = token
        self.length += 1
        self.extend([token])

    def next_step(self) -> None:
        self.busy = False
