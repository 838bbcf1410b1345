"""Request -> engine process -> (streamed) response, on the API process's side.

The engine runs in its own process (server/engine_core.py says why). Here a request is validated
(the same `Engine.prepare` the engine runs, so a bad one is a 400 before anything streams), sent to
the engine process, and each of its outputs is handed to the request's asyncio queue by one reader
thread, one call per event loop per engine step. The event loop never waits for the engine.

Streaming emits each step's newly final tokens: for diffusion the longest prefix of the answer that
is fully committed (tokens are committed out of order within a block; nothing is sent until
everything before it is final), for AR every token.
"""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.multiprocessing as mp

from unmask.engine.engine import Engine
from unmask.engine.request import Request, RequestOutput, SamplingParams
from unmask.likelihood import NO_TOKEN_SCORES, TokenScore
from unmask.server.engine_core import (Add, Cancel, CoreConfig, CoreStats, Ready, Score, Scored, Step, Stop, run_core,
                                       widen_pipe)
from unmask.server.metrics import Metrics

SHUTTING_DOWN = "the server is shutting down"


@dataclass
class Subscription:
    request: Request
    queue: asyncio.Queue
    loop: asyncio.AbstractEventLoop


class EngineUnavailable(RuntimeError):
    """The engine cannot take requests now (shutting down, or its process died): a 503."""


class AsyncEngine:
    """The API process's handle on the engine process: submit, stream outputs, cancel, stop."""

    def __init__(self, model: torch.nn.Module, *, max_running: int = 32, max_tokens: int = 16384,
                 verifiers: dict[str, torch.nn.Module] | None = None, max_queue: int = 256,
                 metrics: Metrics | None = None) -> None:
        self.model = model
        self.verifiers = dict(verifiers or {})
        # Validation only: it runs `prepare`, never a step, so it allocates no KV storage.
        self.validator = Engine(model, max_running=max_running, max_tokens=max_tokens, verifiers=self.verifiers,
                                load_verifiers=False)
        self.config = CoreConfig(max_running, max_tokens, torch.get_num_threads())
        self.metrics = metrics or Metrics()
        self.stats = CoreStats()
        self.subs: dict[str, Subscription] = {}
        self.scoring: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}  # prompts being scored
        self.send_lock = threading.Lock()
        self.max_queue = max_queue  # requests that may wait for a slot beyond the max_running in flight
        self.accepting = False
        self.draining = False  # shutting down: requests in flight run on, new ones are refused
        self.failure: str | None = None  # why the engine process stopped, once it has
        self.process: mp.Process | None = None
        self.reader: threading.Thread | None = None
        self.threads = self.config.threads

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self, timeout: float = 300.0) -> None:
        """Start the engine process and wait until it can take requests."""
        ctx = mp.get_context("spawn")  # fork would copy the API process's threads' locks mid-use
        core_in, self.to_core = ctx.Pipe(duplex=False)
        widen_pipe(self.to_core)
        self.from_core, core_out = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=run_core, name="unmask-engine", daemon=True,
                                   args=(self.model, self.verifiers, self.config, core_in, core_out))
        self.process.start()
        core_in.close()
        core_out.close()
        if not self.from_core.poll(timeout):
            raise RuntimeError(f"the engine process did not start within {timeout:.0f} s")
        try:
            ready = self.from_core.recv()
        except EOFError:
            self.process.join(5)
            raise RuntimeError(f"the engine process exited at start (exit code {self.process.exitcode})") from None
        assert isinstance(ready, Ready)
        self.threads = ready.threads
        self.accepting = True
        self.reader = threading.Thread(target=self.read_outputs, name="unmask-engine-reader", daemon=True)
        self.reader.start()

    def stop(self) -> None:
        """Stop the engine process; whatever is still in flight ends with a clean 'shutting down' error."""
        self.accepting = False
        if self.process is not None and self.process.is_alive():
            self.send(Stop())
            self.process.join(timeout=30)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(timeout=5)
        if self.reader is not None:
            self.reader.join(timeout=5)
        self.abort_all(SHUTTING_DOWN)

    def abort_all(self, message: str) -> None:
        """End every request still in flight with `message` (finish reason 'aborted')."""
        for rid in list(self.subs):
            self.deliver_all([RequestOutput(rid, [], True, "aborted", message)])
        for rid in list(self.scoring):
            self.deliver_scores([Scored(rid, error=message)], aborted=True)

    # -- the engine process's outputs ---------------------------------------------------------------
    def read_outputs(self) -> None:
        """Reader thread: each Step from the engine process, to the requests' queues."""
        try:
            while True:
                msg = self.from_core.recv()
                if isinstance(msg, Step):
                    self.stats = msg.stats
                    self.metrics.observe_engine(msg.stats)
                    self.deliver_all(msg.outputs)
                    self.deliver_scores(msg.scored)
        except (EOFError, OSError):
            pass
        self.accepting = False
        if self.process is not None:
            self.process.join(timeout=5)
            code = self.process.exitcode
            if code not in (0, None):
                self.failure = f"the engine process stopped (exit code {code})"
                self.abort_all(self.failure)

    def deliver_all(self, outs: list[RequestOutput]) -> None:
        """One step's outputs, handed to each event loop in one call: one wake-up per step, not per request."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, RequestOutput]]] = {}
        now = time.monotonic()
        for out in outs:
            sub = self.subs.pop(out.request_id, None) if out.finished else self.subs.get(out.request_id)
            if sub is None:
                continue
            req = sub.request
            if out.new_token_ids:
                req.first_token_at = req.first_token_at or now
                req.output_ids += out.new_token_ids
            if out.finished:
                req.finish_reason, req.finished_at, req.error = out.finish_reason, now, out.error
                self.metrics.observe_request(req)
            by_loop.setdefault(sub.loop, []).append((sub.queue, out))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(put_all, items)
            except RuntimeError:  # that event loop has closed: nobody is waiting there any more
                pass

    def deliver_scores(self, scored: list[Scored], aborted: bool = False) -> None:
        for s in scored:
            waiting = self.scoring.pop(s.request_id, None)
            if waiting is None:
                continue
            loop, future = waiting
            if s.error is None:
                result: Any = (s.scores, s.passes)
            else:
                result = (EngineUnavailable if aborted else ValueError)(s.error)
            try:
                loop.call_soon_threadsafe(settle, future, result)
            except RuntimeError:  # that event loop has closed
                pass

    # -- requests -----------------------------------------------------------------------------------
    async def score(self, ids: list[int], n_ctx: int, top: int, seed: int) -> tuple[list[TokenScore], int]:
        """`unmask.likelihood.token_scores` of `ids[n_ctx:]`, computed in the engine process between two
        steps; returns the scores and the forward passes they took. ValueError if they cannot be computed."""
        if not self.accepting or self.draining:
            raise EngineUnavailable(self.failure or SHUTTING_DOWN)
        if self.model.config.kind == "continuous":
            raise ValueError(NO_TOKEN_SCORES)
        if len(ids) > self.model.config.max_seq_len:
            raise ValueError(f"the prompt ({len(ids)} tokens) exceeds this model's context of "
                             f"{self.model.config.max_seq_len}")
        rid = f"score-{uuid.uuid4().hex[:16]}"
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.scoring[rid] = (loop, future)
        if not self.accepting:  # the engine stopped meanwhile: nobody would answer
            self.scoring.pop(rid, None)
            raise EngineUnavailable(self.failure or SHUTTING_DOWN)
        self.send(Score(rid, list(ids), n_ctx, top, seed))
        try:
            return await future
        finally:
            self.scoring.pop(rid, None)

    def submit(self, prompt_ids: list[int], params: SamplingParams, queue: asyncio.Queue | None = None
               ) -> Subscription:
        """Queue a request (ValueError if it cannot run, EngineUnavailable if nothing can) and subscribe;
        several requests (one per choice) may share one `queue`."""
        if not self.accepting or self.draining:
            raise EngineUnavailable(self.failure or SHUTTING_DOWN)
        if len(self.subs) >= self.config.max_running + self.max_queue:
            raise EngineUnavailable(f"the server is full ({self.config.max_running} requests running and "
                                    f"{self.max_queue} waiting, unmask serve --max-queue); try again later")
        req, _ = self.validator.prepare(prompt_ids, params)
        sub = Subscription(req, queue if queue is not None else asyncio.Queue(), asyncio.get_running_loop())
        self.subs[req.request_id] = sub
        if not self.accepting:  # the engine stopped while this was being checked
            self.subs.pop(req.request_id, None)
            raise EngineUnavailable(self.failure or SHUTTING_DOWN)
        self.send(Add(req.request_id, list(prompt_ids), params))
        return sub

    def cancel(self, request_id: str) -> None:
        """Drop a request whose client left; returns at once."""
        if self.subs.pop(request_id, None) is not None:
            self.metrics.requests.labels(outcome="cancelled").inc()
            self.send(Cancel(request_id))

    def send(self, msg: Add | Cancel | Score | Stop) -> None:
        try:
            with self.send_lock:  # one pipe, written from every event loop
                self.to_core.send(msg)
        except (OSError, ValueError):  # the engine process is gone; the reader reports it
            pass

    async def outputs(self, subs: list[Subscription]) -> AsyncIterator[RequestOutput]:
        """Every step's news for requests sharing one queue, until all have ended; leaving early (the client
        is gone) cancels those still running."""
        left = {s.request.request_id for s in subs}
        try:
            while left:
                out = await subs[0].queue.get()
                if out.finished:
                    left.discard(out.request_id)
                yield out
        finally:
            for rid in left:
                self.cancel(rid)

    @property
    def running(self) -> int:
        return self.stats.running

    @property
    def waiting(self) -> int:
        return self.stats.waiting


def settle(future: asyncio.Future, result: Any) -> None:
    if future.done():  # the client left and its handler was cancelled
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


def put_all(items: list[tuple[asyncio.Queue, RequestOutput]]) -> None:
    for q, out in items:
        q.put_nowait(out)
