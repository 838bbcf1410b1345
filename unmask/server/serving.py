"""Request -> engine -> (streamed) response. One background thread drives the engine; each request
waits on its own asyncio queue, fed from that thread, so the event loop never runs a forward pass.

Streaming emits each step's newly final tokens: for diffusion the longest prefix of the answer that
is fully committed (tokens are committed out of order within a block; nothing is sent until
everything before it is final), for AR every token. Text is decoded from the token prefix each time
and the new suffix sent, so multi-byte tokens never split.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from unmask.decode.rows import Row
from unmask.engine.engine import Engine
from unmask.engine.request import Request, RequestOutput, SamplingParams
from unmask.server.metrics import Metrics


@dataclass
class Subscription:
    request: Request
    queue: asyncio.Queue
    loop: asyncio.AbstractEventLoop


class AsyncEngine:
    def __init__(self, engine: Engine, metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.metrics = metrics or Metrics()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.subs: dict[str, Subscription] = {}
        # New requests and cancellations go through the engine thread: the event loop must never wait for
        # the engine's lock, which the engine thread holds through each step (tens of ms at 16 rows) and
        # takes again right after it; waiting there would stall every other client's stream.
        self.submitted: queue.SimpleQueue[tuple[Request, Row]] = queue.SimpleQueue()
        self.cancelled: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.loop, name="unmask-engine", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Cancel whatever is still in flight and stop the engine thread."""
        self.stopping.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
        with self.lock:
            for rid in list(self.subs):
                self.engine.cancel(rid)
                self.deliver(RequestOutput(rid, [], True, "cancelled"))

    def loop(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                self.take_submitted()
                self.drop_cancelled()
                busy = self.engine.has_work()
                outs = self.engine.step() if busy else []
                self.deliver_all(outs)
                self.metrics.observe_engine(self.engine)
            if not busy:
                self.wake.wait(timeout=0.5)
                self.wake.clear()
            else:
                time.sleep(0)  # a bare Lock is not fair: let a submit waiting for it in between steps

    def take_submitted(self) -> None:
        """Queue requests the event loop prepared (engine thread, under the lock)."""
        while True:
            try:
                req, row = self.submitted.get_nowait()
            except queue.Empty:
                return
            try:
                self.engine.add_prepared(req, row)
            except ValueError as err:
                self.deliver(RequestOutput(req.request_id, [], True, "error", str(err)))

    def drop_cancelled(self) -> None:
        """Free the slots of requests whose clients left (engine thread, under the lock)."""
        while True:
            try:
                rid = self.cancelled.get_nowait()
            except queue.Empty:
                return
            if self.subs.pop(rid, None) is not None:
                self.engine.cancel(rid)
                self.metrics.requests.labels(outcome="cancelled").inc()

    def deliver_all(self, outs: list[RequestOutput]) -> None:
        """One step's outputs, handed to each event loop in one call: one wake-up per step, not per request."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, RequestOutput]]] = {}
        for out in outs:
            sub = self.subs.get(out.request_id)
            if sub is None:
                continue
            if out.finished:
                del self.subs[out.request_id]
                self.metrics.observe_request(sub.request)
            by_loop.setdefault(sub.loop, []).append((sub.queue, out))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(put_all, items)

    def deliver(self, out: RequestOutput) -> None:
        self.deliver_all([out])

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> Subscription:
        """Queue a request (ValueError if it cannot run) and subscribe to its outputs."""
        if self.stopping.is_set():
            raise RuntimeError("the server is shutting down")
        req, row = self.engine.prepare(prompt_ids, params)  # validation needs no lock: it changes nothing
        sub = Subscription(req, asyncio.Queue(), asyncio.get_running_loop())
        self.subs[req.request_id] = sub
        self.submitted.put((req, row))
        self.wake.set()
        return sub

    def cancel(self, request_id: str) -> None:
        """Ask the engine thread to drop a request; returns at once."""
        self.cancelled.put(request_id)
        self.wake.set()

    async def outputs(self, sub: Subscription) -> AsyncIterator[RequestOutput]:
        """Each step's news until the request ends; leaving early (client gone) cancels it."""
        done = False
        try:
            while not done:
                out = await sub.queue.get()
                done = out.finished
                yield out
        finally:
            if not done:
                self.cancel(sub.request.request_id)


def put_all(items: list[tuple[asyncio.Queue, RequestOutput]]) -> None:
    for q, out in items:
        q.put_nowait(out)
