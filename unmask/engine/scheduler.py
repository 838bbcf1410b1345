"""Which requests step together. Plain Python on purpose: no torch, testable without a model.

First come, first served: waiting requests join in arrival order whenever the running set has
room under both caps (requests and token slots), and a request never overtakes an earlier one,
so a large request at the head is never starved by a stream of small ones behind it.
"""
from __future__ import annotations

from collections import deque

from unmask.engine.request import Request, Status


class Scheduler:
    def __init__(self, max_running: int = 32, max_tokens: int = 8192) -> None:
        if max_running < 1 or max_tokens < 1:
            raise ValueError("the scheduler needs room for at least one request and one token")
        self.max_running, self.max_tokens = max_running, max_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    def check(self, request: Request) -> None:
        """ValueError if the request could never run here (it needs more token slots than the engine holds)."""
        if request.footprint > self.max_tokens:
            raise ValueError(f"the request needs {request.footprint} token slots; this engine holds "
                             f"{self.max_tokens} at most")

    def add(self, request: Request) -> None:
        self.check(request)
        request.status = Status.WAITING
        self.waiting.append(request)

    @property
    def tokens_in_flight(self) -> int:
        return sum(r.footprint for r in self.running)

    def schedule(self) -> list[Request]:
        """Admit waiting requests (in order) while they fit; return the set that steps now."""
        self.running = [r for r in self.running if not r.finished]
        used = self.tokens_in_flight
        while self.waiting and len(self.running) < self.max_running:
            head = self.waiting[0]
            if used + head.footprint > self.max_tokens:
                break  # wait for room rather than let a later, smaller request overtake
            self.waiting.popleft()
            head.status = Status.RUNNING
            self.running.append(head)
            used += head.footprint
        return list(self.running)

    def drop(self, request_id: str) -> Request | None:
        """Remove a request wherever it is (cancel); return it if found."""
        for r in self.waiting:
            if r.request_id == request_id:
                self.waiting.remove(r)
                return r
        for r in self.running:
            if r.request_id == request_id:
                self.running.remove(r)
                return r
        return None

    def has_work(self) -> bool:
        return bool(self.waiting) or any(not r.finished for r in self.running)
