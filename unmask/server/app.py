"""FastAPI routes only: parse, hand to `serving`, shape the OpenAI response. Errors are OpenAI-style bodies."""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from unmask.evaluation import prompt_for
from unmask.server.guards import Guards
from unmask.server.protocol import (ChatRequest, CompletionRequest, DecodingFields, chat_body, completion_body,
                                    error_body, new_id, usage)
from unmask.server.serving import SHUTTING_DOWN, AsyncEngine, Subscription


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

    def submit(text: str, body: DecodingFields) -> tuple[Subscription, int]:
        if not text:
            raise APIError(400, "the prompt is empty", param="prompt")
        try:
            ids, default_new = prompt_for(model, text)
            return engine.submit(ids, body.sampling_params(default_new)), len(ids)
        except ValueError as err:
            raise APIError(400, str(err)) from None
        except RuntimeError as err:
            raise APIError(503, str(err), "server_error") from None

    async def respond(http: Request, sub: Subscription, n_prompt: int, stream: bool,
                      shape: Callable[..., dict[str, Any]], rid: str) -> Response:
        if stream:
            return StreamingResponse(sse(sub, n_prompt, shape, rid), media_type="text/event-stream")
        ids: list[int] = []
        out = None
        async for out in engine.outputs(sub):
            ids += out.new_token_ids
            if await http.is_disconnected():
                break  # leaving the loop cancels the request
        if out is None or not out.finished:
            return Response(status_code=499)
        if out.finish_reason == "aborted":
            raise APIError(503, out.error or SHUTTING_DOWN, "server_error")
        if out.finish_reason == "error":
            raise APIError(500, f"generation failed: {out.error}", "server_error")
        return JSONResponse(shape(rid, name, tok.decode(ids), finish_reason(out.finish_reason), usage(n_prompt, len(ids))))

    async def sse(sub: Subscription, n_prompt: int, shape: Callable[..., dict[str, Any]], rid: str
                  ) -> AsyncIterator[str]:
        ids: list[int] = []
        sent = ""
        async for out in engine.outputs(sub):
            if out.finish_reason in ("error", "aborted"):
                message = out.error if out.finish_reason == "aborted" else f"generation failed: {out.error}"
                yield f"data: {json.dumps(error_body(message or SHUTTING_DOWN, 'server_error'))}\n\n"
                break
            ids += out.new_token_ids
            text = tok.decode(ids)
            delta, sent = text[len(sent):], text
            if delta or out.finished:
                reason = finish_reason(out.finish_reason) if out.finished else None
                use = usage(n_prompt, len(ids)) if out.finished else None
                yield f"data: {json.dumps(shape(rid, name, delta, reason, use, chunk=True))}\n\n"
        yield "data: [DONE]\n\n"

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request) -> Response:
        check_model(body.model)
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise APIError(400, "give one prompt per request (a list of exactly one string)", param="prompt")
            prompt = prompt[0]
        sub, n_prompt = submit(prompt, body)
        return await respond(http, sub, n_prompt, body.stream, completion_body, new_id("cmpl"))

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, http: Request) -> Response:
        check_model(body.model)
        try:
            text = tok.apply_chat_template([m.model_dump() for m in body.messages], add_generation_prompt=True)
        except ValueError as err:
            raise APIError(400, str(err), param="messages") from None
        sub, n_prompt = submit(text, body)
        return await respond(http, sub, n_prompt, body.stream, chat_body, new_id("chatcmpl"))

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": started, "owned_by": "unmask",
                                            "kind": model.config.kind}]}

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


def finish_reason(reason: str | None) -> str:
    return "stop" if reason == "stop" else "length" if reason == "length" else (reason or "stop")
