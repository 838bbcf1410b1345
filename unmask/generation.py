"""`unmask.generate`: one entry point for every model kind and strategy (the CLI calls it too)."""
from __future__ import annotations

from typing import Any

import torch

from unmask.decode.autoregressive import autoregress
from unmask.decode.cache_policy import make_cache
from unmask.decode.early_commit import EarlyCommit
from unmask.decode.loop import denoise
from unmask.decode.pipeline import D2F_DEFAULTS, pipeline
from unmask.decode.registry import AR_STRATEGY, D2F_STRATEGY, ISD_STRATEGY, make_strategy
from unmask.decode.result import GenerationResult
from unmask.decode.strided import strided

DEFAULT_BLOCK_SIZE = 32
AR_ONLY_PARAMS = ("top_k", "top_p")


# What `generate` does when no strategy is named: the fastest setting the benchmark showed to keep
# accuracy (README "Benchmark"). Naming a strategy opts out of all of it: `low_confidence` alone is vanilla.
DEFAULT_DECODING: dict[str, dict[str, Any]] = {
    "ar": {"strategy": AR_STRATEGY},
    "diffusion": {"strategy": "threshold", "threshold": 0.9, "confidence": "entropy", "cache": "dual"},
    "block-diffusion": {"strategy": "d2f"},  # per-row blocks on the model's own grid, cached exactly
}


def default_decoding(model: torch.nn.Module) -> dict[str, Any]:
    return dict(DEFAULT_DECODING[model.config.kind])


def default_strategy(model: torch.nn.Module) -> str:
    return DEFAULT_DECODING[model.config.kind]["strategy"]


def with_defaults(model: torch.nn.Module, strategy: str | None, cache: str | None,
                  params: dict[str, Any]) -> tuple[str, str | None, dict[str, Any]]:
    """(strategy, cache, rule options) after filling in the model kind's default decoding."""
    if strategy is not None:
        return strategy, cache, params
    d = default_decoding(model)
    default_cache = d.pop("cache", None)
    return d.pop("strategy"), cache if cache is not None else default_cache, {**d, **params}


def default_block_size(model: torch.nn.Module) -> int:
    """A block-causal model was trained to denoise one of its blocks after clean ones: decode that size."""
    return model.config.block_size if model.config.kind == "block-diffusion" else DEFAULT_BLOCK_SIZE


def generate(model: torch.nn.Module, prompt_ids: torch.Tensor, *, strategy: str | None = None,
             max_new_tokens: int = 64, block_size: int | None = None, steps: int | None = None,
             temperature: float = 0.0, stop_at_eos: bool = True, seed: int | None = None,
             prompt_mask: torch.Tensor | None = None, cache: str | None = None, refresh_every: int | None = None,
             early_commit: bool | tuple[float, ...] = False, early_commit_pool: str = "mean",
             **strategy_params: Any) -> GenerationResult:
    """Generate up to `max_new_tokens` after each row of `prompt_ids` `# (B, P)`.

    strategy: a diffusion step rule ("low_confidence", "random", ...) or "ar" for causal models;
        None picks the model kind's default (DEFAULT_DECODING, cache included).
    block_size: semi-autoregressive block (default 32, a block-diffusion model's own block size, or the
        whole span if shorter). steps: denoising steps over the whole span (None: one token per step).
    prompt_mask: `# (B, P)` bool, False on left padding. stop_at_eos: cut each row at its first EOS
        and skip blocks once every row has ended. seed: for sampling (temperature > 0, random).
    cache: "prefix", "dual" or "delayed" approximate caches (None: recompute everything each step);
        refresh_every: a full recompute every k steps. early_commit: Prophet's commit-all-at-once
        (True for the published logit-gap thresholds, or your own: three, one per third of the answer,
        or one for all); early_commit_pool: "mean" (Prophet) or "min" gap over the masked positions.
    strategy_params: the rule's own options, e.g. threshold=0.9, factor=1.0, confidence="margin".
    """
    if strategy is None and steps is not None and model.config.kind != "ar":
        strategy = "low_confidence"  # a step budget names LLaDA's schedule, the rule that takes one
    strategy, cache, strategy_params = with_defaults(model, strategy, cache, strategy_params)
    if early_commit_pool != "mean" and not early_commit:
        raise ValueError(f"early_commit_pool {early_commit_pool!r} pools the gaps of early commit: "
                         "set early_commit too")
    check_request(model, prompt_ids, max_new_tokens, strategy)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    if strategy == ISD_STRATEGY:
        if cache is not None or refresh_every is not None or early_commit or strategy_params:
            raise ValueError("strategy 'isd' takes no cache, early commit or rule options")
        return strided(model, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                       stop_at_eos=stop_at_eos, prompt_mask=prompt_mask, generator=generator)
    if strategy == D2F_STRATEGY:
        if cache is not None or refresh_every is not None or early_commit or steps is not None:
            raise ValueError("strategy 'd2f' caches exactly on its own and takes no steps, cache or early commit")
        unknown = sorted(set(strategy_params) - set(D2F_DEFAULTS))
        if unknown:
            raise ValueError(f"strategy 'd2f' does not take {', '.join(unknown)} "
                             f"(it takes {', '.join(D2F_DEFAULTS)})")
        return pipeline(model, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                        stop_at_eos=stop_at_eos, prompt_mask=prompt_mask, generator=generator, **strategy_params)
    if strategy == AR_STRATEGY:
        if cache is not None or refresh_every is not None or early_commit:
            raise ValueError("cache, refresh_every and early_commit are diffusion options; "
                             "strategy 'ar' always decodes with its exact KV cache")
        unknown = sorted(set(strategy_params) - set(AR_ONLY_PARAMS) - {"use_cache"})
        if unknown:
            raise ValueError(f"strategy 'ar' does not take {', '.join(unknown)}")
        return autoregress(model, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                           stop_at_eos=stop_at_eos, prompt_mask=prompt_mask, generator=generator, **strategy_params)
    rule = make_strategy(strategy, **strategy_params)
    block = min(block_size or default_block_size(model), max_new_tokens)
    return denoise(model, prompt_ids, rule, gen_length=max_new_tokens, block_size=block, steps=steps,
                   temperature=temperature, stop_at_eos=stop_at_eos, prompt_mask=prompt_mask, generator=generator,
                   cache=make_cache(cache, refresh_every),
                   early_commit=early_commit_rule(early_commit, early_commit_pool))


def early_commit_rule(option: bool | tuple[float, ...], pool: str = "mean") -> EarlyCommit | None:
    if option is False or option is None:
        return None
    if option is True:
        return EarlyCommit(pool=pool)
    return EarlyCommit(tuple(float(g) for g in option), pool)


def check_request(model: torch.nn.Module, prompt_ids: torch.Tensor, max_new_tokens: int, strategy: str) -> None:
    """Reject what cannot work with one clear sentence (ValueError)."""
    if prompt_ids.dim() != 2 or prompt_ids.shape[1] == 0:
        raise ValueError("the prompt is empty: give at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
    total, context = prompt_ids.shape[1] + max_new_tokens, model.config.max_seq_len
    if total > context:
        raise ValueError(f"prompt ({prompt_ids.shape[1]} tokens) plus {max_new_tokens} new tokens is {total}, "
                         f"more than this model's context of {context}")
    kind = model.config.kind
    if kind == "ar" and strategy not in (AR_STRATEGY, ISD_STRATEGY):
        raise ValueError(f"this is an autoregressive model: use strategy 'ar' (or 'isd'), not {strategy!r}")
    if kind != "ar" and strategy in (AR_STRATEGY, ISD_STRATEGY):
        raise ValueError(f"strategy {strategy!r} needs an autoregressive model; this one is {kind}")
