"""OpenAI-compatible request and response bodies (pydantic), plus unmask's own decoding fields.

The decoding fields are unmask/decode/spec.py's options, by their HTTP names (the flag's name with `_`
for `-`; OpenAI's `max_tokens` for max_new_tokens), sent as extra body fields (the openai client's
`extra_body=`). Their types and ranges are checked by the spec when the engine prepares the request, so
a wrong value, an option the decoder does not take, or a strategy the model cannot run is a 400 with one
sentence naming the field. Unknown fields are ignored, as OpenAI does, except `n` > 1 and `best_of`.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

from unmask.decode.spec import OPTIONS, http_name
from unmask.engine.request import SamplingParams

HTTP_OPTIONS = tuple(o for o in OPTIONS if o.field_name)


class OpenAIFields(BaseModel):
    stream: bool = False
    n: int = Field(1, ge=1, le=1)

    def sampling_params(self, default_new: int) -> SamplingParams:
        """The engine's parameters for this body; `default_new` tokens when it names no max_tokens."""
        options = {o.name: getattr(self, o.field_name) for o in HTTP_OPTIONS}
        if options["max_new_tokens"] is None:
            options["max_new_tokens"] = default_new
        return SamplingParams(http_name, **options)


# One field per option, untyped here on purpose: the spec is the one place its type and range live.
DecodingFields = create_model(
    "DecodingFields", __base__=OpenAIFields,
    **{o.field_name: (Any, Field(None, description=o.help)) for o in HTTP_OPTIONS})


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
