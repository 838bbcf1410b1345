"""FastAPI routes only: parse, hand to `serving`, shape the OpenAI response. Errors are OpenAI-style bodies."""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from unmask import __version__
from unmask.evaluation import default_new_tokens, prompt_for, prompt_warning
from unmask.server import completions
from unmask.server.completions import chat_choice, completion_choice
from unmask.server.guards import Guards
from unmask.server.protocol import (ChatRequest, CompletionRequest, DecodingFields, DetokenizeRequest,
                                    TokenizeRequest, error_body, new_id)
from unmask.server.serving import SHUTTING_DOWN, AsyncEngine, EngineUnavailable, Subscription


log = logging.getLogger("unmask.server")


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param


def create_app(model: torch.nn.Module, name: str, *, max_running: int = 32, max_tokens: int = 16384,
               verifiers: dict[str, torch.nn.Module] | None = None, max_queue: int = 256, api_key: str | None = None,
               max_body: int = 8 << 20, body_timeout: float = 30.0) -> FastAPI:
    """The server for `model`; `verifiers`: the AR models requests of strategy 'verifier' may name (loaded once).

    Past `max_running` + `max_queue` requests a new one is a 503; with `api_key` every route but /health and
    /metrics needs 'Authorization: Bearer <api_key>'; a body over `max_body` bytes is a 413, one slower
    than `body_timeout` seconds a 408 (server/guards.py)."""
    engine = AsyncEngine(model, max_running=max_running, max_tokens=max_tokens, verifiers=verifiers,
                         max_queue=max_queue)
    tok = model.tokenizer
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(engine.start)
        yield
        await asyncio.to_thread(engine.stop)  # after uvicorn's graceful drain: whatever is left is cancelled

    app = FastAPI(title="unmask", lifespan=lifespan)
    app.add_middleware(Guards, api_key=api_key, max_body=max_body, body_timeout=body_timeout)
    app.state.engine = engine

    @app.exception_handler(APIError)
    async def api_error(_: Request, err: APIError) -> JSONResponse:
        return JSONResponse(error_body(err.message, err.kind, err.param, err.code), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        if first.get("type") == "json_invalid":
            message, where = "the request body is not valid JSON", ""
        else:
            message = f"{where or 'body'}: {first.get('msg', 'invalid value')}"
        return JSONResponse(error_body(message, param=where or None), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(err.detail), "not_found_error" if err.status_code == 404 else
                                       "invalid_request_error"), status_code=err.status_code)

    def check_model(requested: str) -> None:
        if requested != name:
            raise APIError(404, f"model {requested!r} is not served here; this server serves {name!r}",
                           code="model_not_found", param="model")

    def check_fields(body: DecodingFields) -> None:
        refused = body.refused()
        if refused:
            raise APIError(400, refused)
        if body.ignored():
            log.warning("ignored unknown request fields: %s", ", ".join(body.ignored()))

    def encode(prompt: str | list[int]) -> tuple[list[int], int]:
        """Token ids and default answer length of a text or token-id prompt."""
        if isinstance(prompt, list):
            vocab = model.config.vocab_size
            if not prompt or any(not 0 <= t < vocab for t in prompt):
                raise APIError(400, f"a token-id prompt needs ids in [0, {vocab})", param="prompt")
            return prompt, default_new_tokens(model)
        if not prompt:
            raise APIError(400, "the prompt is empty", param="prompt")
        try:
            return prompt_for(model, prompt)
        except ValueError as err:
            raise APIError(400, str(err), param="prompt") from None

    async def run(http: Request, body: DecodingFields, prompts: list[str | list[int]], kind: str,
                  shape: completions.Shape) -> Response:
        """Every prompt x n choices through the engine; one response (or one stream) for them all."""
        check_fields(body)
        rid = new_id("chatcmpl" if kind.startswith("chat") else "cmpl")
        queue: asyncio.Queue = asyncio.Queue()
        subs: list[Subscription] = []
        choices: list[completions.Choice] = []
        prompt_tokens = 0
        echo = bool(getattr(body, "echo", False))
        # A prompt outside the model's training task still runs, but the client is told (header and field).
        warnings = [w for p in prompts if isinstance(p, str) and (w := prompt_warning(model, p))]
        headers = {"X-Unmask-Warning": "; ".join(warnings)} if warnings else None
        scoring = []  # (prompt ids, its choices) whose prompt is scored (echo with logprobs)
        try:
            top = body.top_alternatives()
            generate = not (echo and body.scores_only())  # max_tokens 0 without echo: the spec's 400
            if not generate:
                body.max_tokens = None  # checked as a one-token request below; nothing is generated
            for prompt in prompts:
                ids, default_new = encode(prompt)
                prompt_tokens += len(ids)
                own = []
                for k in range(body.n):
                    params = body.sampling_params(default_new if generate else 1, k)
                    if generate:
                        sub = engine.submit(ids, params, queue)
                        subs.append(sub)
                    else:  # nothing runs; the options are still checked, so a bad one is still a 400
                        engine.validator.prepare(ids, params)
                        sub = None
                    choice = completions.Choice(len(choices) + len(own), sub and sub.request.request_id, params.stop)
                    choice.echo = (prompt if isinstance(prompt, str) else tok.decode(ids)) if echo else ""
                    own.append(choice)
                choices += own
                if echo and top is not None:
                    scoring.append((ids, own, body.seed or 0))  # diffusion's draws: the request's seed
            for ids, own, seed in scoring:  # between engine steps, in the engine process
                entries, passes = await score_prompt(ids, top, seed)
                for c in own:
                    c.echo_entries = entries
                own[0].score_passes = passes
        except ValueError as err:
            cancel_all(subs)
            raise APIError(400, str(err)) from None
        except EngineUnavailable as err:
            cancel_all(subs)
            raise APIError(503, str(err), "server_error") from None
        except asyncio.CancelledError:
            cancel_all(subs)
            raise
        outputs = engine.outputs(subs)
        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            chunk_kind = "chat.completion.chunk" if kind == "chat.completion" else kind
            return StreamingResponse(completions.stream(outputs, choices, tok.decode, rid, name, chunk_kind, shape,
                                                        prompt_tokens, include, top is not None),
                                     media_type="text/event-stream", headers=headers)
        by_id = {c.request_id: c for c in choices}
        async for out in outputs:
            by_id[out.request_id].take(out)
            if await http.is_disconnected():
                await outputs.aclose()  # cancels what is still running
                return Response(status_code=499)
        bad = completions.failure(choices)
        if bad is not None and bad.kind == "aborted":
            raise APIError(503, bad.error or SHUTTING_DOWN, "server_error")
        if bad is not None:
            raise APIError(500, f"generation failed: {bad.error}", "server_error")
        if top is not None:
            for c in choices:
                c.entries = c.echo_entries + c.logprob_entries(tok.decode)
        body_out = completions.envelope(rid, name, kind, [shape(c, c.echo + c.text(tok.decode), False)
                                                          for c in choices])
        body_out["usage"] = completions.usage(choices, prompt_tokens)
        if warnings:
            body_out["warnings"] = warnings
        return JSONResponse(body_out, headers=headers)

    async def score_prompt(ids: list[int], top: int, seed: int) -> tuple[list[completions.Entry], int]:
        """The echoed prompt's entries: AR scores each token from those before it (the first has none to
        score it: null, as OpenAI's echo), diffusion each token's share of `unmask.loglikelihood`
        (`loglikelihood(model, [], prompt, seed=seed)`, or from the second token for a shifted model)."""
        n_ctx = 1 if model.config.kind == "ar" or getattr(model.config, "logits_shift", False) else 0
        first: list[completions.Entry] = [(tok.decode(ids[:1]), None, None)] if n_ctx else []
        if len(ids) <= n_ctx:
            return first, 0
        scores, passes = await engine.score(ids, n_ctx, top, seed)
        return first + [(tok.decode([t]), s.logprob, [(tok.decode([a]), v) for a, v in s.alternatives])
                        for t, s in zip(ids[n_ctx:], scores)], passes

    def cancel_all(subs: list[Subscription]) -> None:
        for sub in subs:
            engine.cancel(sub.request.request_id)

    @app.post("/v1/completions")
    async def completions_route(body: CompletionRequest, http: Request) -> Response:
        check_model(body.model)
        prompt = body.prompt
        # one string, one id list: one prompt; a list of them: one answer (x n) each
        prompts = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else list(prompt)
        if not prompts:
            raise APIError(400, "the prompt list is empty", param="prompt")
        return await run(http, body, prompts, "text_completion", completion_choice)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, http: Request) -> Response:
        check_model(body.model)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            text = tok.apply_chat_template(messages, add_generation_prompt=True)
        except ValueError as err:
            raise APIError(400, str(err), param="messages") from None
        return await run(http, body, [text], "chat.completion", chat_choice)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        check_model(body.model or name)
        ids = encode(body.prompt)[0] if body.prompt else []
        return {"tokens": ids, "count": len(ids), "max_model_len": model.config.max_seq_len}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        check_model(body.model or name)
        vocab = model.config.vocab_size
        if any(not 0 <= t < vocab for t in body.tokens):
            raise APIError(400, f"token ids must be in [0, {vocab})", param="tokens")
        return {"prompt": tok.decode(body.tokens)}

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": __version__}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": started, "owned_by": "unmask",
                                            "kind": model.config.kind, "max_model_len": model.config.max_seq_len}]}

    @app.get("/health")
    async def health() -> Response:
        if not engine.accepting:
            return JSONResponse({"status": "unavailable", "model": name, "reason": engine.failure or SHUTTING_DOWN},
                                status_code=503)
        return JSONResponse({"status": "ok", "model": name, "running": engine.running, "waiting": engine.waiting,
                "threads": engine.threads})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(engine.metrics.render(), media_type="text/plain; version=0.0.4")

    return app
