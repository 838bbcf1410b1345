"""The engine: step() = schedule -> run -> postprocess. Thread-unsafe by design: one loop drives it."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from unmask.engine.request import Request, RequestOutput, SamplingParams, Status
from unmask.engine.runner import Row, Runner
from unmask.engine.scheduler import Scheduler


@dataclass
class EngineStats:
    """Running totals for /metrics: plain numbers, read by the server."""

    requests_finished: int = 0
    requests_failed: int = 0
    requests_cancelled: int = 0
    tokens_generated: int = 0
    forward_passes: int = 0
    row_forwards: int = 0  # each step's requests, summed: tokens per forward a request took part in
    latencies_s: list[float] = field(default_factory=list)
    first_token_s: list[float] = field(default_factory=list)


class Engine:
    def __init__(self, model: torch.nn.Module, *, max_running: int = 32, max_tokens: int = 16384) -> None:
        self.model = model
        self.scheduler = Scheduler(max_running, max_tokens)
        self.runner = Runner(model)
        self.requests: dict[str, Request] = {}
        self.stats = EngineStats()

    def add_request(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None) -> Request:
        """Queue a request; a request that cannot run raises ValueError here, before it waits."""
        req, row = self.prepare(prompt_ids, params, request_id)
        self.add_prepared(req, row)
        return req

    def prepare(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None
                ) -> tuple[Request, Row]:
        """Validate a request and build its row without changing the engine, so another thread may call it
        while a step runs (the server does); ValueError if it cannot run. `add_prepared` then queues it."""
        req = Request(list(prompt_ids), params) if request_id is None else Request(list(prompt_ids), params, request_id)
        row = self.runner.build(req)
        self.scheduler.check(req)
        return req, row

    def add_prepared(self, req: Request, row: Row) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"request id {req.request_id!r} is already in use")
        self.scheduler.add(req)
        self.runner.adopt(req.request_id, row)
        self.requests[req.request_id] = req

    def cancel(self, request_id: str) -> None:
        """Free a request's slot now (a client went away); a finished or unknown id is ignored."""
        req = self.requests.get(request_id)
        if req is None or req.finished:
            return
        self.scheduler.drop(request_id)
        self.finish(req, "cancelled")
        self.stats.requests_cancelled += 1

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    @property
    def queue_length(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def running(self) -> int:
        return len([r for r in self.scheduler.running if not r.finished])

    def step(self) -> list[RequestOutput]:
        batch = self.scheduler.schedule()
        if not batch:
            return []
        before = self.runner.passes
        try:
            outs = self.runner.step(batch)
        except Exception:  # one request's fault must not sink the batch: retry each alone
            outs = []
            for req in batch:
                try:
                    outs += self.runner.step([req])
                except Exception as err:  # noqa: BLE001 - reported to that request's client
                    outs.append(RequestOutput(req.request_id, [], True, "error", f"{type(err).__name__}: {err}"))
        self.stats.forward_passes += self.runner.passes - before
        self.stats.row_forwards += len(batch)
        for out in outs:
            self.postprocess(out)
        return outs

    def postprocess(self, out: RequestOutput) -> None:
        req = self.requests[out.request_id]
        if out.new_token_ids:
            if req.first_token_at is None:
                req.first_token_at = time.monotonic()
                self.stats.first_token_s.append(req.first_token_at - req.arrival)
            req.output_ids += out.new_token_ids
            self.stats.tokens_generated += len(out.new_token_ids)
        if out.finished:
            req.error = out.error
            self.finish(req, out.finish_reason or "length")
            if out.finish_reason == "error":
                self.stats.requests_failed += 1
            else:
                self.stats.requests_finished += 1
                self.stats.latencies_s.append(req.finished_at - req.arrival)

    def finish(self, req: Request, reason: str) -> None:
        req.status, req.finish_reason, req.finished_at = Status.FINISHED, reason, time.monotonic()
        self.runner.release(req.request_id)
        self.requests.pop(req.request_id, None)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Request]:
        """Run a list of prompts to completion (offline use and tests); results in prompt order."""
        reqs = [self.add_request(p, params) for p in prompts]
        while self.has_work():
            self.step()
        return reqs
