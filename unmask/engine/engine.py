"""The engine: step() = schedule -> run -> postprocess. Thread-unsafe by design: one loop drives it."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from unmask.decode.rows import Row, build_row
from unmask.decode.spec import Decoding, Namer, python_name, resolve
from unmask.decode.strategies.verifier import check_pair, load_verifier
from unmask.engine.request import Request, RequestOutput, SamplingParams, Status
from unmask.engine.runner import RowError, Runner
from unmask.engine.scheduler import Scheduler
from unmask.models.paged_cache import PAGE, PagedKVCache, first_parameter


@dataclass
class EngineStats:
    """Running totals: plain counters, never lists (a server runs for months; latency distributions are
    the server's bounded Prometheus histograms)."""

    requests_finished: int = 0
    requests_failed: int = 0
    requests_cancelled: int = 0
    tokens_generated: int = 0
    forward_passes: int = 0
    row_forwards: int = 0  # each step's requests, summed: tokens per forward a request took part in


def check_prompt(model: torch.nn.Module, prompt_len: int, max_new_tokens: int, namer: Namer = python_name) -> None:
    """Reject a prompt that cannot run with one clear sentence (ValueError)."""
    if prompt_len == 0:
        raise ValueError("the prompt is empty: give at least one token")
    total, context = prompt_len + max_new_tokens, model.config.max_seq_len
    if total > context:
        raise ValueError(f"prompt ({prompt_len} tokens) plus {max_new_tokens} new tokens ({namer('max_new_tokens')}) "
                         f"is {total}, more than this model's context of {context}")


MAX_STOP = 16  # stop strings per request (OpenAI allows 4)
MAX_LOGPROBS = 20  # alternatives per token (OpenAI's chat limit)


def check_stop(stop: tuple[str, ...], model: torch.nn.Module, namer: Namer) -> None:
    """Refuse stop strings the engine cannot honour, with one sentence (ValueError)."""
    if not stop:
        return
    if len(stop) > MAX_STOP:
        raise ValueError(f"stop takes at most {MAX_STOP} strings, not {len(stop)}")
    if any(not isinstance(s, str) or not s for s in stop):
        raise ValueError("stop must be non-empty strings")
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("stop needs the model's tokenizer, and this model has none")


def check_logprobs(logprobs: object) -> None:
    """Refuse a logprobs count the rows cannot report (ValueError)."""
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                 or not 0 <= logprobs <= MAX_LOGPROBS):
        raise ValueError(f"logprobs must be a whole number from 0 to {MAX_LOGPROBS}, not {logprobs!r}")


class Engine:
    """Continuous batching over the decoding rows: requests join and leave between steps.

    verifiers: AR models rows of strategy 'verifier' may name, loaded once by whoever builds the engine
    (`unmask serve --verifier NAME`). With `load_verifiers` (offline use) a verifier named by a request and
    not given here is loaded on first use; a server refuses it instead.
    """

    def __init__(self, model: torch.nn.Module, *, max_running: int = 32, max_tokens: int = 16384,
                 verifiers: dict[str, torch.nn.Module] | None = None, load_verifiers: bool = True) -> None:
        self.model = model
        self.device = first_parameter(model).device
        for verifier in (verifiers or {}).values():
            check_pair(model, verifier)
        self.scheduler = Scheduler(max_running, max_tokens)
        self.runner = Runner(model, max_tokens, verifiers)
        self.load_verifiers = load_verifiers
        self.requests: dict[str, Request] = {}
        self.waiting_rows: dict[str, Row] = {}  # queued requests' rows: their KV slots come at admission
        self.stats = EngineStats()

    def add_request(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None,
                    generator: torch.Generator | None = None) -> Request:
        """Queue a request; a request that cannot run raises ValueError here, before it waits."""
        req, row = self.prepare(prompt_ids, params, request_id, generator)
        self.add_prepared(req, row)
        return req

    def prepare(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None,
                generator: torch.Generator | None = None) -> tuple[Request, Row]:
        """Validate a request and build its row without changing the engine, so another thread may call it
        while a step runs (the server does); ValueError with one sentence if it cannot run."""
        d = resolve(self.model.config, params.options, params.namer)
        check_stop(params.stop, self.model, params.namer)
        check_logprobs(params.logprobs)
        check_prompt(self.model, len(prompt_ids), d.max_new_tokens, params.namer)
        d = self.with_verifier(d)
        if generator is None and d.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(d.seed)
        prompt = torch.tensor(list(prompt_ids), dtype=torch.long, device=self.device)
        row = build_row(self.model, prompt, d, generator)
        row.want = params.logprobs
        row.trace = {} if params.trace else None
        footprint = max(PagedKVCache.pages_needed(n) for n in row.footprint.values()) * PAGE
        kw = {} if request_id is None else {"request_id": request_id}
        req = Request(list(prompt_ids), params, decoding=d, footprint=footprint, trace=row.trace, **kw)
        self.scheduler.check(req)
        return req, row

    def fit(self, max_tokens: int) -> None:
        """Size the KV storage (token slots) before the first step, e.g. to exactly one batch's footprint."""
        if self.runner.pools:
            raise RuntimeError("the engine's KV storage is already allocated")
        self.scheduler.max_tokens = self.runner.capacity = max_tokens

    def with_verifier(self, d: Decoding) -> Decoding:
        """The decoding with its verifier named as the runner knows it; loads or refuses an unknown one."""
        if d.strategy != "verifier":
            return d
        if isinstance(d.verifier, torch.nn.Module):
            check_pair(self.model, d.verifier)
            name = f"{getattr(d.verifier, 'name', 'verifier')}@{id(d.verifier):x}"
            self.runner.add_model(name, d.verifier)
            return dataclasses.replace(d, verifier=name)
        if d.verifier in self.runner.models:
            return d
        if not self.load_verifiers:
            raise ValueError(f"this server has no verifier {d.verifier!r}: start it with --verifier {d.verifier}")
        try:
            verifier = load_verifier(d.verifier, str(self.device))
        except (FileNotFoundError, KeyError, ValueError) as err:
            raise ValueError(f"cannot load verifier {d.verifier!r}: {err}") from None
        check_pair(self.model, verifier)
        self.runner.add_model(d.verifier, verifier)
        return d

    def add_prepared(self, req: Request, row: Row) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"request id {req.request_id!r} is already in use")
        self.scheduler.add(req)
        self.waiting_rows[req.request_id] = row
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
        for req in batch:
            if req.request_id in self.waiting_rows:
                self.runner.admit(req.request_id, self.waiting_rows.pop(req.request_id))
        before = self.runner.passes
        results = self.runner.step([r.request_id for r in batch])
        self.stats.forward_passes += self.runner.passes - before
        self.stats.row_forwards += len(batch)
        outs = []
        for req in batch:
            res = results.get(req.request_id)
            if isinstance(res, RowError):
                outs.append(RequestOutput(req.request_id, [], True, "error", str(res)))
            elif res is not None:
                req.nfe = self.runner.rows[req.request_id].passes
                finished, reason = res.finished, res.reason if res.finished else None
                if req.params.stop and not finished and self.hits_stop(req, res.new_tokens):
                    finished, reason = True, "stop"  # its later blocks are never computed
                outs.append(RequestOutput(req.request_id, res.new_tokens, finished, reason, nfe=req.nfe,
                                          logprobs=res.logprobs))
        for out in outs:
            self.postprocess(out)
        return outs

    def hits_stop(self, req: Request, new_tokens: list[int]) -> bool:
        """Whether the answer's final text, with this step's tokens, holds one of the request's stop strings."""
        if not new_tokens:
            return False
        text = self.model.tokenizer.decode(req.output_ids + list(new_tokens))
        return any(s in text for s in req.params.stop)

    def row(self, request_id: str) -> Row | None:
        return self.runner.rows.get(request_id) or self.waiting_rows.get(request_id)
    def postprocess(self, out: RequestOutput) -> None:
        req = self.requests[out.request_id]
        if out.new_token_ids:
            if req.first_token_at is None:
                req.first_token_at = time.monotonic()
            req.output_ids += out.new_token_ids
            self.stats.tokens_generated += len(out.new_token_ids)
        if out.finished:
            req.error = out.error
            self.finish(req, out.finish_reason or "length")
            if out.finish_reason == "error":
                self.stats.requests_failed += 1
            else:
                self.stats.requests_finished += 1

    def finish(self, req: Request, reason: str) -> None:
        req.status, req.finish_reason, req.finished_at = Status.FINISHED, reason, time.monotonic()
        self.waiting_rows.pop(req.request_id, None)
        self.runner.release(req.request_id)
        self.requests.pop(req.request_id, None)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Request]:
        """Run a list of prompts to completion (offline use and tests); results in prompt order."""
        reqs = [self.add_request(p, params) for p in prompts]
        while self.has_work():
            self.step()
        return reqs
