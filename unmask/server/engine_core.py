"""The server's engine process: it owns the Engine and nothing else runs Python in it.

Why a process and not a thread: the engine's forward passes are many small torch calls, each giving up
the GIL and taking it back. In one process the event loop's HTTP work takes the GIL in between, and
a Python thread busy only a quarter of the time doubled the engine's step time on this machine
(measured: 10 -> 20 ms at 31 rows, sort-ar). vLLM's engine core runs apart for the same reason.

The API process sends `Add` / `Cancel` / `Score` / `Stop` down one pipe; this process answers with one
`Step` per engine step (every request's news, plus the counters /metrics and /health show) up the other.
A `Score` (a prompt's token log-probabilities, for `echo`) runs between two steps, as one forward pass
(AR) or `mc_num / batch_size` (diffusion), so it delays the requests in flight by that much.
The weights are not copied: torch's spawn pickling moves them to shared memory (CUDA: IPC handles).
"""
from __future__ import annotations

import signal
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import torch

from unmask.engine.engine import Engine
from unmask.engine.request import RequestOutput, SamplingParams
from unmask.likelihood import TokenScore, token_scores


@dataclass(frozen=True)
class Add:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams


@dataclass(frozen=True)
class Cancel:
    request_id: str


@dataclass(frozen=True)
class Score:
    """Score `ids[n_ctx:]` with `unmask.likelihood.token_scores` (each token's `top` alternatives)."""

    request_id: str
    ids: list[int]
    n_ctx: int
    top: int
    seed: int


@dataclass(frozen=True)
class Scored:
    request_id: str
    scores: list[TokenScore] = field(default_factory=list)
    passes: int = 0  # forward passes the scoring took
    error: str | None = None


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class CoreStats:
    """The engine's counters after a step, as /metrics and /health report them."""

    forward_passes: int = 0
    row_forwards: int = 0
    tokens_generated: int = 0
    running: int = 0
    waiting: int = 0

    @staticmethod
    def of(engine: Engine) -> "CoreStats":
        s = engine.stats
        return CoreStats(s.forward_passes, s.row_forwards, s.tokens_generated, engine.running, engine.queue_length)


@dataclass(frozen=True)
class Step:
    outputs: list[RequestOutput] = field(default_factory=list)
    stats: CoreStats = CoreStats()
    scored: list[Scored] = field(default_factory=list)


@dataclass(frozen=True)
class Ready:
    threads: int


@dataclass(frozen=True)
class CoreConfig:
    max_running: int
    max_tokens: int
    threads: int


def run_core(model: torch.nn.Module, verifiers: dict[str, torch.nn.Module], config: CoreConfig,
             inbox: Connection, outbox: Connection) -> None:
    """The engine process's main: step while there is work, wait on the pipe while there is none."""
    # Ctrl-C and SIGTERM go to the API process, which drains and then sends Stop; a signal here would
    # kill the engine under requests the API process is still answering.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(config.threads)
    engine = Engine(model, max_running=config.max_running, max_tokens=config.max_tokens, verifiers=verifiers,
                    load_verifiers=False)
    outbox.send(Ready(torch.get_num_threads()))
    while True:
        msg = receive(inbox, wait=not engine.has_work())  # block only when idle
        outputs: list[RequestOutput] = []
        scored: list[Scored] = []
        news = msg is not None or engine.has_work()
        while msg is not None:
            if isinstance(msg, Stop):
                return
            if isinstance(msg, Score):
                scored.append(score(model, msg))
            else:
                outputs += handle(engine, msg)
            msg = receive(inbox, wait=False)
        if engine.has_work():
            outputs += engine.step()
        if news:  # a cancel changes the counters too, with no output
            outbox.send(Step(outputs, CoreStats.of(engine), scored))


def receive(inbox: Connection, wait: bool) -> Add | Cancel | Score | Stop | None:
    """The next message; None if none has arrived and `wait` is off; Stop once the API process is gone.

    Read between steps, in this thread: a reader thread would take the GIL from the forward passes at
    every message (measured slower). The pipe is enlarged instead (`widen_pipe`), so the API process
    does not wait on a full pipe while a step runs."""
    try:
        if wait or inbox.poll(0):
            return inbox.recv()
    except (EOFError, OSError):
        return Stop()
    return None


def widen_pipe(conn: Connection, size: int = 1 << 20) -> None:
    """Let the pipe hold `size` bytes (Linux: ~3000 requests) before a writer waits; elsewhere a no-op."""
    try:
        import fcntl

        fcntl.fcntl(conn.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except (ImportError, OSError):  # not Linux, or above /proc/sys/fs/pipe-max-size: keep the default
        pass


def handle(engine: Engine, msg: Add | Cancel) -> list[RequestOutput]:
    if isinstance(msg, Cancel):
        engine.cancel(msg.request_id)
        return []
    try:
        engine.add_request(msg.prompt_ids, msg.params, request_id=msg.request_id)
    except ValueError as err:  # the API process checked it already; report rather than die
        return [RequestOutput(msg.request_id, [], True, "error", str(err))]
    return []


def score(model: torch.nn.Module, msg: Score) -> Scored:
    """The prompt's token scores with `unmask.loglikelihood`'s defaults (128 draws in batches of 32)."""
    mc_num, batch_size = 128, 32
    try:
        scores = token_scores(model, msg.ids, msg.n_ctx, top=msg.top, mc_num=mc_num, batch_size=batch_size,
                              seed=msg.seed)
    except (ValueError, RuntimeError) as err:  # checked in the API process already; report rather than die
        return Scored(msg.request_id, error=str(err))
    return Scored(msg.request_id, scores, 1 if model.config.kind == "ar" else mc_num // batch_size)
