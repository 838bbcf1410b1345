"""The contract between one request's decoding state (a row) and whatever runs the model for it.

Each engine step the runner asks every row for `work()`, runs all of it in as few forward passes as it
can, and hands each row the logits of its own part (`take`); it asks again until every row answers None
(a verifier row asks twice: once for the dLLM, once for its AR model), then `end_step()` reports the
tokens that became final and whether the row finished (and why). A row never runs a model, and the
runner knows no decoding rule: rows can be driven with fabricated logits.

Columns are a row's own: column c holds token c of prompt + answer, its RoPE position is c, and its
keys and values live in slot column c of the row's KV storage (unmask/models/paged_cache.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

MAIN = "main"  # the model the request decodes with; a verifier's work names the verifier instead


@dataclass
class Work:
    """One row's part of a forward pass: run `ids` at columns [start, start+len) (or the ascending `cols`),
    write their keys/values to those slot columns, and let them attend slot columns [0, keys)."""

    ids: torch.Tensor  # (Lq,) token ids
    start: int
    keys: int
    cols: torch.Tensor | None = None  # (Lq,) scattered columns (delayed cache); None: contiguous from start
    mask: torch.Tensor | None = None  # (Lq, keys) bool, True where a query may attend; None: the model's own rule
    model: str = MAIN
    block_size: int | None = None  # block-causal attention's block for this row; None: the model's own
    flow: Any = None  # a continuous model's inputs for these columns (unmask.models.flow.FlowInputs, unbatched)

    @property
    def columns(self) -> torch.Tensor:
        if self.cols is not None:
            return self.cols
        return torch.arange(self.start, self.start + self.ids.numel(), device=self.ids.device)

    @property
    def full(self) -> bool:
        """Runs every column it attends (no cached key is read)."""
        return self.cols is None and self.start == 0 and self.ids.numel() == self.keys


@dataclass(frozen=True)
class Progress:
    """One step's news for one row: generated tokens that became final (in order, EOS excluded when the
    row stops at EOS) and whether it finished, with why ("stop": EOS, "length": the budget)."""

    new_tokens: list[int]
    finished: bool
    reason: str | None = None
    # With logprobs asked for: per new token (its log-probability, [(id, log-probability)] of the likeliest).
    logprobs: list[tuple[float, list[tuple[int, float]]]] | None = None


class Row:
    """Bookkeeping every decoder shares: the final tokens so far, what was reported, forward counts."""

    def __init__(self, max_new_tokens: int, eos_id: int | None, stop_at_eos: bool) -> None:
        self.max_new_tokens = max_new_tokens
        self.eos_id = eos_id
        self.stop_at_eos = stop_at_eos and eos_id is not None
        self.final: list[int] = []  # generated tokens known final, in order (cut before EOS when stopping there)
        self.sent = 0
        self.done = False
        self.reason: str | None = None
        self.passes = 0  # forward passes of the request's model this row took part in
        self.verifier_passes = 0
        self.footprint: dict[str, int] = {}  # KV slot columns the row needs, per model
        self.want: int | None = None  # alternatives to report per token with its log-probability; None: none
        self.scored: dict[int, tuple[float, list[tuple[int, float]]]] = {}  # by position in the answer
        # With a trace asked for (RL rollouts): answer position -> (the pass that committed it, its token),
        # every committed position, those past an EOS included.
        self.trace: dict[int, tuple[int, int]] | None = None

    def work(self) -> Work | None:
        raise NotImplementedError

    def take(self, logits: torch.Tensor) -> None:
        """Logits `# (Lq, V)` of the last `work()`."""
        raise NotImplementedError

    def end_step(self) -> Progress:
        new = self.final[self.sent:]
        lps = None if self.want is None else [self.scored.pop(i, (float("nan"), []))
                                              for i in range(self.sent, len(self.final))]
        self.sent = len(self.final)
        self.next_step()
        return Progress(new, self.done, self.reason, lps)

    @property
    def noting(self) -> bool:
        """Whether commits are to be reported to `note` (log-probabilities or a trace asked for)."""
        return self.want is not None or self.trace is not None

    def note(self, at: list[int], tokens: torch.Tensor, logits: torch.Tensor) -> None:
        """Record, when asked to, the log-probability of each token committed at answer positions `at`, under
        the model's own distribution at the step it was committed (logits `# (n, V)`, temperature 1), and
        the pass that committed it."""
        if self.trace is not None:
            for a, token in zip(at, tokens.view(-1).tolist()):
                self.trace.setdefault(a, (self.passes, token))
        if self.want is None or not at:
            return
        lp = torch.log_softmax(logits.float(), dim=-1)  # (n, V)
        chosen = lp.gather(-1, tokens.view(-1, 1)).view(-1).tolist()
        top = lp.topk(self.want, dim=-1) if self.want else None
        for i, a in enumerate(at):
            alts = list(zip(top.indices[i].tolist(), top.values[i].tolist())) if top is not None else []
            self.scored[a] = (chosen[i], alts)

    def next_step(self) -> None:
        """Get ready for the next step's `work()`."""

    def finish(self, reason: str) -> None:
        self.done, self.reason = True, reason

    def extend(self, tokens: list[int]) -> None:
        """Append newly final tokens; an EOS among them ends the row there (when it stops at EOS)."""
        tokens = tokens[:self.max_new_tokens - len(self.final)]  # a block grid may run past the budget
        if self.stop_at_eos and self.eos_id in tokens:
            self.final += tokens[:tokens.index(self.eos_id)]
            self.finish("stop")
            return
        self.final += tokens
        if len(self.final) >= self.max_new_tokens:
            self.finish("length")

    @property
    def ended_with_eos(self) -> bool:
        return self.reason == "stop"


def final_prefix(x: torch.Tensor, start: int, mask_id: int) -> list[int]:
    """Tokens of x `# (T,)` from `start` up to its first mask: committed, and with nothing before them left open."""
    open_ = (x[start:] == mask_id).nonzero()
    end = int(open_[0]) if open_.numel() else x.numel() - start
    return x[start:start + end].tolist()
