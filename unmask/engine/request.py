"""What a client asks for and what it gets back, as plain data (no tensors: the runner owns those)."""
from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from unmask.decode.spec import Namer, python_name

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class SamplingParams:
    """A request's decoding options as given, by their Python names (unset ones absent or None);
    unmask/decode/spec.py checks and resolves them when the engine prepares the request. `namer` says
    how a refusal names an option (a Python keyword, a CLI flag, an HTTP field)."""

    def __init__(self, namer: Namer = python_name, stop: tuple[str, ...] = (), logprobs: int | None = None,
                 trace: bool = False, **options: Any) -> None:
        self.options = {k: v for k, v in options.items() if v is not None}
        self.namer = namer
        # End the answer once its final text holds one of these (OpenAI's `stop`); the text is cut before it.
        self.stop = tuple(stop)
        # Report each token's log-probability and its `logprobs` likeliest alternatives (None: nothing).
        self.logprobs = logprobs
        # Record which forward pass committed each answer position (RL rollouts: unmask/rl/rollout.py).
        self.trace = trace

    def __repr__(self) -> str:
        shown = {**self.options, **({"stop": self.stop} if self.stop else {})}
        return f"SamplingParams({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    request_id: str = field(default_factory=lambda: f"req-{next(_ids)}")
    status: Status = Status.WAITING
    arrival: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    finished_at: float | None = None
    finish_reason: str | None = None  # "stop" (EOS), "length", "cancelled", "error"
    error: str | None = None
    output_ids: list[int] = field(default_factory=list)  # final tokens, in order, EOS excluded
    nfe: int = 0  # forward passes of the request's model this request took part in
    decoding: Any = None  # its resolved unmask.decode.spec.Decoding
    footprint: int = 0  # KV token slots it holds while running, whole pages: the scheduler's unit of memory
    # With params.trace: answer position -> (the pass that committed it, its token), the row's own record.
    trace: dict[int, tuple[int, int]] | None = None

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED


@dataclass(frozen=True)
class RequestOutput:
    """One step's news for one request: tokens that became final (in order) and whether it ended."""

    request_id: str
    new_token_ids: list[int]
    finished: bool
    finish_reason: str | None = None
    error: str | None = None
    nfe: int = 0  # forward passes of its model the request has taken part in so far
    logprobs: list | None = None  # per new token: (log-probability, [(id, log-probability)] alternatives)
