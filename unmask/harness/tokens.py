"""Text to token ids for lm-eval's scoring requests: a (context, continuation) split and rolling windows.

An AR model (or a Dream-style one, `logits_shift`) predicts token i from the tokens before it, so the
first token of a text needs something before it: with an empty context it gets the EOS id, the stand-in
lm-eval's own models use for "start of text". A masked-diffusion model scores a continuation with no
context at all, so it is given none.
"""
from __future__ import annotations

from typing import Iterator

import torch

from unmask.evaluation import prompt_for, sort_task_of


def needs_context(model: torch.nn.Module) -> bool:
    return model.config.kind == "ar" or bool(getattr(model.config, "logits_shift", False))


def start_token(model: torch.nn.Module) -> int:
    if model.eos_token_id is None:
        raise ValueError("this model has no EOS id to stand before the first token of a text")
    return int(model.eos_token_id)


def encode(model: torch.nn.Module, text: str) -> list[int]:
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("this model has no tokenizer, so lm-eval's text requests cannot be encoded")
    return model.tokenizer.encode(text)


def split_request(model: torch.nn.Module, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) of a loglikelihood request.

    The pair is encoded whole and split at the context's length when the context's own encoding is a prefix
    of it (a subword tokenizer may merge across the seam: the whole is what the model would read); otherwise
    the two are encoded apart. A sort model reads its context as trained, the text then [SEP]."""
    if sort_task_of(model) is not None:
        ctx, cont = prompt_for(model, context)[0], encode(model, continuation)
    else:
        ctx = encode(model, context) if context else []
        whole = encode(model, context + continuation)
        cont = whole[len(ctx):] if whole[:len(ctx)] == ctx and len(whole) > len(ctx) else encode(model, continuation)
    if not ctx and needs_context(model):
        ctx = [start_token(model)]
    return ctx, cont


def rolling_windows(model: torch.nn.Module, text: str) -> Iterator[tuple[list[int], list[int]]]:
    """(context, continuation) windows that score every token of `text` exactly once (lm-eval's rolling
    windows, made disjoint), each window within the model's context."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    tokens = encode(model, text)
    # A window is its prefix token plus up to `width` scored ones, so width leaves room for that one token.
    width = model.config.max_seq_len - 1
    prefix = start_token(model) if tokens and needs_context(model) else 0  # diffusion drops it below
    windows = get_rolling_token_windows(tokens, prefix, width, context_len=1)
    for i, window in enumerate(windows):
        ctx, cont = make_disjoint_window(window)
        if i == 0 and not needs_context(model):
            ctx = []  # diffusion scores the opening tokens with no stand-in before them
        yield ctx, cont
