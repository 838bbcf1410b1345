"""One completion request, as OpenAI shapes it: prompts x n choices, stop strings, streaming, usage and each
choice's body (text or chat layout, logprobs included).

Each choice is one engine request. `stop` is honoured twice: the engine ends a request once its final
text holds a stop string (so later blocks are never computed), and here the text is cut before it;
a stream holds back the last (longest stop - 1) characters until they cannot start a stop string.
"""
from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from unmask.engine.request import RequestOutput
from unmask.server.protocol import error_body

Shape = Callable[["Choice", str, bool], dict[str, Any]]  # (choice, text or delta, is a chunk) -> choice body


@dataclass
class Choice:
    index: int
    request_id: str
    stop: tuple[str, ...] = ()
    ids: list[int] = field(default_factory=list)
    sent: str = ""  # streamed so far
    finished: bool = False
    reason: str | None = None  # OpenAI's finish_reason once finished
    error: str | None = None
    kind: str | None = None  # the engine's finish reason
    nfe: int = 0
    logprobs: list = field(default_factory=list)  # per token: (log-probability, [(id, log-probability)])
    entries: list | None = None  # logprob_entries, once finished, when asked for

    def take(self, out: RequestOutput) -> None:
        self.ids += out.new_token_ids
        self.nfe = out.nfe or self.nfe
        if out.logprobs is not None:
            self.logprobs += out.logprobs
        if out.finished:
            self.finished, self.kind, self.error = True, out.finish_reason, out.error
            self.reason = "stop" if out.finish_reason == "stop" else "length"

    def text(self, decode: Callable[[list[int]], str]) -> str:
        """The answer so far, cut before the first stop string."""
        text = decode(self.ids)
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return text[:min(hits)] if hits else text

    def logprob_entries(self, decode: Callable[[list[int]], str]) -> list[tuple[str, float, list[tuple[str, float]]]]:
        """(token text, log-probability, alternatives) for each token of the answer as returned (cut at a stop)."""
        keep, text = len(self.ids), self.text(decode)
        if len(text) < len(decode(self.ids)):  # cut at a stop: keep the tokens wholly before the cut
            keep = next(i for i in range(len(self.ids)) if len(decode(self.ids[:i + 1])) > len(text))
        return [(decode([t]), lp, [(decode([a]), v) for a, v in alts])
                for t, (lp, alts) in zip(self.ids[:keep], self.logprobs[:keep])]

    def delta(self, decode: Callable[[list[int]], str]) -> str:
        """New text safe to stream: a tail that may still begin a stop string waits."""
        text = self.text(decode)
        if not self.finished and self.stop:
            text = text[:max(len(self.sent), len(text) - max(len(s) for s in self.stop) + 1)]
        new, self.sent = text[len(self.sent):], text
        return new


def usage(choices: list[Choice], prompt_tokens: int) -> dict[str, int]:
    """OpenAI's usage, plus unmask's `forward_passes`: the passes each choice took part in, summed."""
    completion = sum(len(c.ids) for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion, "forward_passes": sum(c.nfe for c in choices)}


def failure(choices: list[Choice]) -> Choice | None:
    return next((c for c in choices if c.kind in ("error", "aborted")), None)


def envelope(rid: str, model: str, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": choices}


async def stream(outputs: AsyncIterator[RequestOutput], choices: list[Choice], decode: Callable[[list[int]], str],
                 rid: str, model: str, kind: str, shape: Shape, prompt_tokens: int, include_usage: bool
                 ) -> AsyncIterator[str]:
    """Server-sent events: each choice's new text as it becomes final, then usage (if asked) and [DONE]."""
    by_id = {c.request_id: c for c in choices}
    async for out in outputs:
        c = by_id[out.request_id]
        c.take(out)
        if c.kind in ("error", "aborted"):
            message = c.error if c.kind == "aborted" else f"generation failed: {c.error}"
            yield f"data: {json.dumps(error_body(message or 'generation failed', 'server_error'))}\n\n"
            break
        delta = c.delta(decode)
        if delta or c.finished:
            body = envelope(rid, model, kind, [shape(c, delta, True)])
            if c.finished and not include_usage:  # unmask's extension: each choice's own count, at its end
                body["usage"] = usage([c], prompt_tokens)
            yield f"data: {json.dumps(body)}\n\n"
    else:
        if include_usage:
            yield f"data: {json.dumps({**envelope(rid, model, kind, []), 'usage': usage(choices, prompt_tokens)})}\n\n"
    yield "data: [DONE]\n\n"


# -- one choice's body, in each endpoint's layout ------------------------------------------------------

def completion_choice(c: Choice, text: str, chunk: bool) -> dict[str, Any]:
    return {"index": c.index, "text": text, "logprobs": completion_logprobs(c.entries),
            "finish_reason": c.reason if c.finished else None}


def completion_logprobs(entries: list | None) -> dict[str, Any] | None:
    """The legacy completions layout: parallel lists, alternatives as {token: log-probability}."""
    if entries is None:
        return None
    offsets, at = [], 0
    for token, _, _ in entries:
        offsets.append(at)
        at += len(token)
    return {"tokens": [t for t, _, _ in entries], "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": [dict(alts) for _, _, alts in entries], "text_offset": offsets}


def chat_logprobs(entries: list | None) -> dict[str, Any] | None:
    if entries is None:
        return None

    def item(token: str, lp: float) -> dict[str, Any]:
        return {"token": token, "logprob": lp, "bytes": list(token.encode())}
    return {"content": [{**item(t, lp), "top_logprobs": [item(a, v) for a, v in alts]} for t, lp, alts in entries],
            "refusal": None}


def chat_choice(c: Choice, text: str, chunk: bool) -> dict[str, Any]:
    reason = c.reason if c.finished else None
    if chunk:
        return {"index": c.index, "delta": {"role": "assistant", "content": text} if text else {},
                "finish_reason": reason}
    return {"index": c.index, "message": {"role": "assistant", "content": text}, "logprobs": chat_logprobs(c.entries),
            "finish_reason": reason}
