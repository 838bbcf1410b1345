"""What a client asks for and what it gets back, as plain data (no tensors: the runner owns those)."""
from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True)
class SamplingParams:
    """Decoding options of one request; `options` holds the rule's own (threshold=..., factor=..., confidence=...)."""

    max_new_tokens: int = 64
    strategy: str | None = None  # None: the model's default
    block_size: int | None = None
    steps: int | None = None
    temperature: float = 0.0
    seed: int | None = None
    stop_at_eos: bool = True
    cache: str | None = None  # None or "dual" (the engine's approximate cache for bidirectional models)
    options: dict[str, Any] = field(default_factory=dict)


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
    nfe: int = 0  # forward passes this request took part in

    @property
    def footprint(self) -> int:
        """Token slots the request may occupy: the scheduler's unit of memory."""
        return len(self.prompt_ids) + self.params.max_new_tokens

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
