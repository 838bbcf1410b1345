"""Prometheus metrics for /metrics, in a registry of their own (several servers may live in one process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from unmask.engine.request import Request
from unmask.server.engine_core import CoreStats

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("unmask_requests", "Requests ended, by outcome", ["outcome"], registry=r)
        self.tokens = Counter("unmask_generated_tokens", "Tokens returned to clients", registry=r)
        self.forwards = Gauge("unmask_forward_passes", "Batched forward passes run by the engine", registry=r)
        self.tokens_per_forward = Gauge("unmask_tokens_per_forward",
                                        "Tokens returned per request-forward (a request in a forward pass)",
                                        registry=r)
        self.queue = Gauge("unmask_queue_length", "Requests waiting for a slot", registry=r)
        self.running = Gauge("unmask_running_requests", "Requests in the running batch", registry=r)
        self.latency = Histogram("unmask_request_latency_seconds", "Arrival to last token", registry=r,
                                 buckets=LATENCY_BUCKETS)
        self.first_token = Histogram("unmask_time_to_first_token_seconds", "Arrival to first token", registry=r,
                                     buckets=LATENCY_BUCKETS)

    def observe_engine(self, s: CoreStats) -> None:
        self.forwards.set(s.forward_passes)
        self.tokens_per_forward.set(s.tokens_generated / s.row_forwards if s.row_forwards else 0.0)
        self.queue.set(s.waiting)
        self.running.set(s.running)

    def observe_request(self, req: Request) -> None:
        self.requests.labels(outcome=req.finish_reason or "unknown").inc()
        self.tokens.inc(len(req.output_ids))
        if req.finished_at is not None and req.finish_reason in ("stop", "length"):
            self.latency.observe(req.finished_at - req.arrival)
        if req.first_token_at is not None:
            self.first_token.observe(req.first_token_at - req.arrival)

    def render(self) -> bytes:
        return generate_latest(self.registry)
