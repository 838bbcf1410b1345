"""OpenAI-compatible request and response bodies (pydantic), plus unmask's own decoding fields.

Fields beyond OpenAI's (strategy, block_size, steps, threshold, factor, confidence, add, activate, cache) are accepted
as extra body fields (the openai client's `extra_body=`) with validated ranges; unknown fields are
ignored, as OpenAI does, except `n` > 1 and `best_of`, which are refused rather than silently dropped.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field

from unmask.engine.request import SamplingParams

MAX_TOKENS_CAP = 4096  # the schema's ceiling; the model's context is checked per request


class DecodingFields(BaseModel):
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_CAP)
    temperature: float = Field(0.0, ge=0.0, le=2.0)  # greedy unless asked: diffusion samplers are usually greedy
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0)
    stream: bool = False
    n: int = Field(1, ge=1, le=1)
    strategy: str | None = None
    block_size: int | None = Field(None, ge=1, le=MAX_TOKENS_CAP)
    steps: int | None = Field(None, ge=1, le=MAX_TOKENS_CAP)
    threshold: float | None = Field(None, gt=0.0, le=1.01)
    factor: float | None = Field(None, gt=0.0, le=100.0)
    confidence: Literal["prob", "margin", "entropy"] | None = None
    add: float | None = Field(None, gt=0.0, le=1.01)  # d2f: tau_add
    activate: float | None = Field(None, gt=0.0, le=1.01)  # d2f: tau_act
    cache: Literal["none", "dual", "exact"] | None = None

    def rule_options(self) -> dict[str, Any]:
        opts = {"threshold": self.threshold, "factor": self.factor, "confidence": self.confidence, "add": self.add,
                "activate": self.activate}
        return {k: v for k, v in opts.items() if v is not None}

    def sampling_params(self, default_new: int) -> SamplingParams:
        """The engine's parameters for this body; `default_new` tokens when it names no max_tokens."""
        options = self.rule_options()
        if self.top_p is not None:
            options["top_p"] = self.top_p
        return SamplingParams(max_new_tokens=self.max_tokens or default_new, strategy=self.strategy,
                              block_size=self.block_size, steps=self.steps, temperature=self.temperature,
                              seed=self.seed, cache=None if self.cache == "none" else self.cache, options=options)


class CompletionRequest(DecodingFields):
    model: str
    prompt: str | list[str]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(DecodingFields):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(rid: str, model: str, text: str, finish: str | None, use: dict[str, int] | None,
                    chunk: bool = False) -> dict[str, Any]:
    body = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
    if use is not None:
        body["usage"] = use
    return body


def chat_body(rid: str, model: str, text: str, finish: str | None, use: dict[str, int] | None,
              chunk: bool = False) -> dict[str, Any]:
    if chunk:
        choice = {"index": 0, "delta": {"role": "assistant", "content": text} if text else {}, "finish_reason": finish}
        body = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                "choices": [choice]}
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        body = {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [choice]}
    if use is not None:
        body["usage"] = use
    return body


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
