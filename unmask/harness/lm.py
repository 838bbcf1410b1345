"""`lm_eval --model unmask --model_args pretrained=NAME_OR_FOLDER[,strategy=...,...]`: lm-evaluation-harness's
model interface on unmask's own code paths.

generate_until decodes through `unmask.generation.decode_requests`, the engine `unmask eval` and `unmask
serve` use (continuous batching, `batch_size` requests in flight); loglikelihood is `unmask.loglikelihood`
(exact for AR, LLaDA's Monte Carlo estimate for masked diffusion). Model arguments besides the ones below
are unmask's decoding options by their Python names (`unmask generate --help` lists them); each is checked
once at start, so a wrong one stops the run with a sentence naming it before any work. An option lm-eval sets
per request (the length, the temperature, top_k, top_p) is refused there: give it with --gen_kwargs.

Importing this module registers "unmask" with lm-eval (the .pth hook does that for the lm_eval command).
"""
from __future__ import annotations

import logging
from itertools import groupby
from typing import Any

import lm_eval.models  # noqa: F401  lm-eval's own models first: see _unmask_lm_eval_hook
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from unmask.decode.spec import SEED_LIMIT, resolve
from unmask.engine.engine import Engine, check_prompt
from unmask.engine.request import SamplingParams
from unmask.evaluation import default_new_tokens, prompt_for
from unmask.generation import decode_requests
from unmask.harness.gen_kwargs import PER_REQUEST, cut_at_stop, gen_name, request_decoding
from unmask.harness.greedy import diffusion_is_greedy
from unmask.harness.tokens import rolling_windows, split_request
from unmask.likelihood import loglikelihood, token_scores
from unmask.models.checkpoints import load_model
from unmask.threads import choose_threads

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
MC_BATCH = 32  # Monte Carlo draws per forward pass at most (LLaDA's evaluation batches 32)
LM_EVAL_DEFAULT_DEVICE = "cuda:0"  # what the lm_eval command passes when --device is not given


@register_model("unmask")
class UnmaskLM(LM):
    """An unmask model for lm-eval.

    pretrained: a bundled model name or a model folder (ours, or a published LLaDA / Dream one).
    batch_size: requests decoded together (continuous batching: a finished one's slot refilled at once);
      "auto" means 32, capped by max_batch_size. device: cpu, cuda, cuda:1, mps; None picks CUDA when there
      is one, and lm_eval's own default, cuda:0, runs on the CPU (with a warning) when there is none.
    dtype: float32 | bfloat16 | float16, or None / "auto" for the checkpoint's own.
    mc_num: Monte Carlo draws per diffusion loglikelihood. seed: seeds those draws, and the requests'
      sampling when they name no seed (a batch's request i gets seed + i). threads: torch's CPU threads
      (default: unmask's choice, one for a small model). decoding: unmask's decoding options.
    """

    def __init__(self, pretrained: str, batch_size: int | str | None = DEFAULT_BATCH_SIZE,
                 max_batch_size: int | None = None, device: str | None = None, dtype: str | None = None,
                 mc_num: int = 128, seed: int = 0, threads: int | None = None, **decoding: Any) -> None:
        super().__init__()
        self.batch_size = choose_batch_size(batch_size, max_batch_size)
        if isinstance(mc_num, bool) or not isinstance(mc_num, int) or mc_num < 1:
            raise ValueError(f"mc_num must be a whole number of at least 1, not {mc_num!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
            raise ValueError(f"seed must be a whole number from 0 to {SEED_LIMIT - 1}, not {seed!r}")
        self.mc_num, self.seed = mc_num, seed
        self.mc_batch = max(b for b in range(1, MC_BATCH + 1) if mc_num % b == 0)
        preset = [name for name in decoding if name in PER_REQUEST]
        if preset:
            raise ValueError(f"{preset[0]} is set per request by lm-eval ({PER_REQUEST[preset[0]]}): give it with "
                             "--gen_kwargs, not --model_args")
        self.model = load_model(str(pretrained), dtype=None if dtype == "auto" else dtype,
                                device=choose_device(device))
        if getattr(self.model, "tokenizer", None) is None:
            raise ValueError(f"{pretrained} has no tokenizer.json, so lm-eval's text requests cannot be encoded")
        choose_threads(self.model, threads)
        self._device = next(self.model.parameters()).device
        self.decoding = dict(decoding)
        self.check_decoding()

    def check_decoding(self) -> None:
        """Prepare one request with the model's decoding options: any refusal comes now, naming the option."""
        options = {**self.decoding, "max_new_tokens": default_new_tokens(self.model)}
        probe = prompt_for(self.model, "")[0] or [self.model.eos_token_id or 0]
        Engine(self.model, max_running=1).prepare(probe, SamplingParams(gen_name, **options))

    # -- generate_until ---------------------------------------------------------------------------------

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Each request's (context, gen_kwargs) -> the generated text, cut before its first stop string.

        Requests with equal generation keywords run together through one engine; results come back in the
        requests' order. Every request is checked before any is decoded."""
        default_new = default_new_tokens(self.model)
        jobs = []
        for index, req in enumerate(requests):
            context, gen_kwargs = req.args
            options, stop = request_decoding(gen_kwargs, default_new, self.seed)
            options = {**self.decoding, **options}
            prompt = prompt_for(self.model, context)[0]
            # The engine checks these too, but group by group: here a refusal comes before any group runs.
            check_prompt(self.model, len(prompt), resolve(self.model.config, options, gen_name).max_new_tokens,
                         gen_name)
            jobs.append((group_key(options, stop), index, prompt, options, stop))
        texts: list[str] = [""] * len(requests)
        for _, group in groupby(sorted(jobs, key=lambda j: (j[0], j[1])), key=lambda j: j[0]):
            group = list(group)
            _, _, _, options, stop = group[0]
            done = decode_requests(self.model, [prompt for _, _, prompt, _, _ in group], options, gen_name,
                                   max_running=self.batch_size, stop=stop,
                                   progress=None if disable_tqdm else "unmask generate_until")
            for (_, index, _, _, _), request in zip(group, done.requests):
                texts[index] = cut_at_stop(self.model.tokenizer.decode(request.output_ids), stop)
                self.cache_hook.add_partial("generate_until", requests[index].args, texts[index])
        return texts

    # -- loglikelihood ----------------------------------------------------------------------------------

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Each (context, continuation) -> (log p(continuation | context) in nats, is_greedy)."""
        out = []
        for req in tqdm(requests, disable=disable_tqdm, desc="unmask loglikelihood"):
            context, continuation = req.args
            ctx, cont = split_request(self.model, context, continuation)
            result = self.score_and_greedy(ctx, cont)
            self.cache_hook.add_partial("loglikelihood", req.args, result)
            out.append(result)
        return out

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Each (text,) -> log p(text) in nats, scored in disjoint windows of the model's context (lm-eval's
        rolling windows: each token once, after as much of the text before it as the window holds)."""
        out = []
        for req in tqdm(requests, disable=disable_tqdm, desc="unmask loglikelihood_rolling"):
            (text,) = req.args
            total = sum(self.score(ctx, cont) for ctx, cont in rolling_windows(self.model, text))
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
            out.append(total)
        return out

    def score_and_greedy(self, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
        """(log p(cont | ctx), is_greedy). AR: one pass gives both (the argmax is each position's likeliest
        alternative); diffusion: the Monte Carlo estimate, then LLaDA's one-mask-at-a-time check."""
        if self.model.config.kind == "ar":
            scores = token_scores(self.model, ctx + cont, len(ctx), top=1)
            return sum(s.logprob for s in scores), all(s.alternatives[0][0] == t for s, t in zip(scores, cont))
        return self.score(ctx, cont), diffusion_is_greedy(self.model, ctx, cont)

    def score(self, ctx: list[int], cont: list[int]) -> float:
        return loglikelihood(self.model, ctx, cont, mc_num=self.mc_num, batch_size=self.mc_batch, seed=self.seed)


def group_key(options: dict[str, Any], stop: tuple[str, ...]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in options.items())), stop


def choose_batch_size(batch_size: int | str | None, max_batch_size: int | None) -> int:
    """Requests in flight: the given number, or for "auto" 32 capped by max_batch_size (continuous batching
    has no batch to tune: a slot is refilled as soon as its request ends)."""
    if max_batch_size is not None and (isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int)
                                       or max_batch_size < 1):
        raise ValueError(f"max_batch_size must be a whole number of at least 1, not {max_batch_size!r}")
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE
    if isinstance(batch_size, str) and batch_size.strip().isdigit():
        batch_size = int(batch_size)
    if isinstance(batch_size, str) and batch_size.strip().split(":")[0] == "auto":
        chosen = min(DEFAULT_BATCH_SIZE, max_batch_size or DEFAULT_BATCH_SIZE)
        log.warning("batch_size %s: unmask batches continuously (a finished request's slot is refilled at once), "
                    "so there is nothing to tune; running %d requests at a time", batch_size, chosen)
        return chosen
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number of at least 1 or 'auto', not {batch_size!r}")
    if max_batch_size is not None and batch_size > max_batch_size:
        raise ValueError(f"batch_size {batch_size} is above max_batch_size {max_batch_size}")
    return batch_size


def choose_device(device: str | None) -> str:
    """The device to load on; ValueError with one sentence for one this machine lacks."""
    from unmask.cli import UserError, check_device

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device) == LM_EVAL_DEFAULT_DEVICE and not torch.cuda.is_available():
        log.warning("device %s (lm_eval's default) but this machine has no CUDA device: running on the CPU; pass "
                    "--device cpu to say so", device)
        return "cpu"
    try:
        check_device(str(device))
    except UserError as err:
        raise ValueError(str(err).replace("--device", "device", 1)) from None
    return str(device)
