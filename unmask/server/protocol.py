"""OpenAI-compatible request and response bodies (pydantic), plus unmask's own decoding fields.

The decoding fields are unmask/decode/spec.py's options, by their HTTP names (the flag's name with `_`
for `-`; OpenAI's `max_tokens` for max_new_tokens), sent as extra body fields (the openai client's
`extra_body=`). Their types and ranges are checked by the spec when the engine prepares the request, so
a wrong value, an option the decoder does not take, or a strategy the model cannot run is a 400 with one
sentence naming the field. Unknown fields are ignored with a logged warning (as vLLM does); OpenAI fields
unmask does not honour (`suffix`, `best_of` above 1, `echo` on chat) are refused.
"""
from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from unmask.decode.spec import OPTIONS, http_name
from unmask.engine.request import SamplingParams

HTTP_OPTIONS = tuple(o for o in OPTIONS if o.field_name)
NOT_YET = ("echo", "suffix")  # OpenAI fields unmask refuses rather than ignores (completions declare echo)
MAX_N = 16


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class OpenAIFields(BaseModel):
    # Unknown fields are kept so the route can warn about them (as vLLM does), never silently dropped.
    model_config = ConfigDict(extra="allow")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    best_of: int | None = Field(None, ge=1, le=1)  # n candidates ranked by likelihood: not offered
    stop: str | list[str] | None = None
    user: str | None = None

    def sampling_params(self, default_new: int, choice: int = 0) -> SamplingParams:
        """The engine's parameters for this body; `default_new` tokens when it names no max_tokens; choice
        k of n samples with seed + k (the batch rule of `unmask.generate`)."""
        options = {o.name: getattr(self, o.field_name) for o in HTTP_OPTIONS}
        if options["max_new_tokens"] is None:
            options["max_new_tokens"] = default_new
        if choice and isinstance(options.get("seed"), int) and not isinstance(options["seed"], bool):
            options["seed"] += choice
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(http_name, stop=stop, logprobs=self.top_alternatives(), **options)

    def top_alternatives(self) -> int | None:
        """How many alternatives per token to report with its log-probability; None: no logprobs."""
        return None

    def refused(self) -> str | None:
        """The first field given that unmask does not honour, named in a sentence; None if all are honoured."""
        for field in NOT_YET:
            if (self.model_extra or {}).get(field) not in (None, False, 0):
                return f"{field} is not supported on this endpoint by unmask serve; leave it out"
        return None

    def ignored(self) -> list[str]:
        """Unknown fields (warned about, as OpenAI and vLLM ignore them)."""
        return sorted(k for k in (self.model_extra or {}) if k not in NOT_YET)


# One field per option, untyped here on purpose: the spec is the one place its type and range live.
DecodingFields = create_model(
    "DecodingFields", __base__=OpenAIFields,
    **{o.field_name: (Any, Field(None, description=o.help)) for o in HTTP_OPTIONS})


class CompletionRequest(DecodingFields):
    model: str
    # A string, a list of strings (one answer each), token ids, or a list of token-id lists.
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: Any = None  # how many alternatives per token (0: the token's own log-probability only)
    # The prompt before the answer, in the text and (with logprobs) scored; with max_tokens 0 only the prompt.
    echo: bool = False

    def top_alternatives(self) -> int | None:
        return self.logprobs  # the engine checks it: a whole number from 0 to 20

    def scores_only(self) -> bool:
        """max_tokens 0: score the prompt, generate nothing (what lm-eval's loglikelihood asks for)."""
        return self.echo and self.max_tokens == 0 and not isinstance(self.max_tokens, bool)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(DecodingFields):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Any = None  # the newer name of max_tokens
    logprobs: bool = False
    top_logprobs: Any = None

    def top_alternatives(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return (0 if self.top_logprobs is None else self.top_logprobs) if self.logprobs else None

    def sampling_params(self, default_new: int, choice: int = 0) -> SamplingParams:
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                raise ValueError("max_tokens and max_completion_tokens differ: give one of them")
            self.max_tokens = self.max_completion_tokens
        return super().sampling_params(default_new, choice)


class TokenizeRequest(BaseModel):
    model: str | None = None
    prompt: str = ""


class DetokenizeRequest(BaseModel):
    model: str | None = None
    tokens: list[int]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
