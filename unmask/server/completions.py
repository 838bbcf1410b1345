"""One completion request, as OpenAI shapes it: prompts x n choices, stop strings, streaming, usage and each
choice's body (text or chat layout, logprobs included).

Each choice is one engine request (none with echo and max_tokens 0). `stop` is honoured twice: the
engine ends a request once its final text holds a stop string (so later blocks are never computed), and
here the text is cut before it; a stream holds back the last (longest stop - 1) characters until they
cannot start a stop string. With logprobs a stream sends each token's entry in the chunk whose text
completes it. `echo` puts the prompt before the answer, with its token scores when logprobs are asked.
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
Entry = tuple[str, "float | None", "list[tuple[str, float]] | None"]  # token text, log-probability, alternatives


@dataclass
class Choice:
    index: int
    request_id: str | None  # None: nothing to generate (echo with max_tokens 0)
    stop: tuple[str, ...] = ()
    ids: list[int] = field(default_factory=list)
    sent: str = ""  # streamed so far
    finished: bool = False
    reason: str | None = None  # OpenAI's finish_reason once finished
    error: str | None = None
    kind: str | None = None  # the engine's finish reason
    nfe: int = 0
    logprobs: list = field(default_factory=list)  # per token: (log-probability, [(id, log-probability)])
    entries: list[Entry] | None = None  # what the body being shaped reports as logprobs (None: not asked)
    entries_at: int = 0  # text offset of the first of `entries`
    streamed_tokens: int = 0  # tokens whose entries a stream has sent
    echo: str = ""  # the prompt, shown before the answer (echo)
    echo_entries: list[Entry] = field(default_factory=list)  # its tokens' scores (echo with logprobs)
    score_passes: int = 0  # forward passes scoring the prompt took

    def __post_init__(self) -> None:
        if self.request_id is None:  # nothing to generate: finished at once, as a zero-token length stop
            self.finished, self.reason, self.kind = True, "length", "length"

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

    def logprob_entries(self, decode: Callable[[list[int]], str]) -> list[Entry]:
        """(token text, log-probability, alternatives) for each token of the answer as returned (cut at a stop)."""
        return self.entries_between(0, self.kept(decode), decode)

    def kept(self, decode: Callable[[list[int]], str]) -> int:
        """How many tokens the returned answer holds whole: all, unless it is cut at a stop string."""
        text = self.text(decode)
        if len(text) == len(decode(self.ids)):
            return len(self.ids)
        return next(i for i in range(len(self.ids)) if len(decode(self.ids[:i + 1])) > len(text))

    def entries_between(self, start: int, end: int, decode: Callable[[list[int]], str]) -> list[Entry]:
        return [(decode([t]), lp, [(decode([a]), v) for a, v in alts])
                for t, (lp, alts) in zip(self.ids[start:end], self.logprobs[start:end])]

    def stream_entries(self, decode: Callable[[list[int]], str]) -> list[Entry]:
        """Entries of the tokens the text streamed so far now holds whole, not sent before."""
        start = end = self.streamed_tokens
        if self.finished:
            end = self.kept(decode)
        else:
            while end < len(self.ids) and len(decode(self.ids[:end + 1])) <= len(self.sent):
                end += 1
        self.streamed_tokens = end
        self.entries_at = len(self.echo) + len(decode(self.ids[:start]))
        return self.entries_between(start, end, decode)

    def delta(self, decode: Callable[[list[int]], str]) -> str:
        """New text safe to stream: a tail that may still begin a stop string waits."""
        text = self.text(decode)
        if not self.finished and self.stop:
            text = text[:max(len(self.sent), len(text) - max(len(s) for s in self.stop) + 1)]
        new, self.sent = text[len(self.sent):], text
        return new


def usage(choices: list[Choice], prompt_tokens: int) -> dict[str, int]:
    """OpenAI's usage, plus unmask's `forward_passes`: the passes each choice took part in (and any
    prompt scoring took), summed."""
    completion = sum(len(c.ids) for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion,
            "forward_passes": sum(c.nfe + c.score_passes for c in choices)}


def failure(choices: list[Choice]) -> Choice | None:
    return next((c for c in choices if c.kind in ("error", "aborted")), None)


def envelope(rid: str, model: str, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": choices}


async def stream(outputs: AsyncIterator[RequestOutput], choices: list[Choice], decode: Callable[[list[int]], str],
                 rid: str, model: str, kind: str, shape: Shape, prompt_tokens: int, include_usage: bool,
                 logprobs: bool = False) -> AsyncIterator[str]:
    """Server-sent events: each choice's echoed prompt, its new text as it becomes final (with its tokens'
    logprobs if asked), then usage (if asked) and [DONE]."""
    by_id = {c.request_id: c for c in choices}

    def chunk(c: Choice, text: str) -> str:
        body = envelope(rid, model, kind, [shape(c, text, True)])
        if c.finished and not include_usage:  # unmask's extension: each choice's own count, at its end
            body["usage"] = usage([c], prompt_tokens)
        return f"data: {json.dumps(body)}\n\n"

    for c in choices:
        if c.echo or c.finished:  # the prompt first; a choice with nothing to generate ends here
            c.entries, c.entries_at = (c.echo_entries if logprobs else None), 0
            yield chunk(c, c.echo)
    async for out in outputs:
        c = by_id[out.request_id]
        c.take(out)
        if c.kind in ("error", "aborted"):
            message = c.error if c.kind == "aborted" else f"generation failed: {c.error}"
            yield f"data: {json.dumps(error_body(message or 'generation failed', 'server_error'))}\n\n"
            break
        delta = c.delta(decode)
        if logprobs:
            c.entries = c.stream_entries(decode)
        if delta or c.finished or c.entries:
            yield chunk(c, delta)
    else:
        if include_usage:
            yield f"data: {json.dumps({**envelope(rid, model, kind, []), 'usage': usage(choices, prompt_tokens)})}\n\n"
    yield "data: [DONE]\n\n"


# -- one choice's body, in each endpoint's layout ------------------------------------------------------

def completion_choice(c: Choice, text: str, chunk: bool) -> dict[str, Any]:
    return {"index": c.index, "text": text, "logprobs": completion_logprobs(c.entries, c.entries_at),
            "finish_reason": c.reason if c.finished else None}


def completion_logprobs(entries: list[Entry] | None, at: int = 0) -> dict[str, Any] | None:
    """The legacy completions layout: parallel lists, alternatives as {token: log-probability}; an AR
    prompt's first token (nothing before it to score it) has null for both, as OpenAI's echo gives."""
    if entries is None:
        return None
    offsets = []
    for token, _, _ in entries:
        offsets.append(at)
        at += len(token)
    return {"tokens": [t for t, _, _ in entries], "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": [None if alts is None else dict(alts) for _, _, alts in entries], "text_offset": offsets}


def chat_logprobs(entries: list[Entry] | None) -> dict[str, Any] | None:
    if entries is None:
        return None

    def item(token: str, lp: float) -> dict[str, Any]:
        return {"token": token, "logprob": lp, "bytes": list(token.encode())}
    return {"content": [{**item(t, lp), "top_logprobs": [item(a, v) for a, v in alts]} for t, lp, alts in entries],
            "refusal": None}


def chat_choice(c: Choice, text: str, chunk: bool) -> dict[str, Any]:
    reason = c.reason if c.finished else None
    if chunk:
        body = {"index": c.index, "delta": {"role": "assistant", "content": text} if text else {},
                "finish_reason": reason}
        if c.entries is not None:
            body["logprobs"] = chat_logprobs(c.entries)
        return body
    return {"index": c.index, "message": {"role": "assistant", "content": text}, "logprobs": chat_logprobs(c.entries),
            "finish_reason": reason}
