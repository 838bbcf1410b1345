"""THE option spec: every decoding option once, with its type, range, default and the decoders that take it.

`unmask generate/eval` flags, the HTTP request fields and `unmask.generate`'s keyword checks are all
derived from `OPTIONS`, and `resolve` is the one place a request's options become a `Decoding`. An option
the chosen decoder does not take, or a decoder the model cannot run, is refused with one sentence that
names it (ValueError: exit 2 on the command line, HTTP 400), never dropped or replaced.

With no strategy, a model decodes by its kind's default (DEFAULT_DECODING). An option that default takes
adjusts it (`threshold=0.95` on a diffusion model: the default at 0.95); an option it does not take picks
the one decoder that does (`steps`: low_confidence, `factor`: factor, `add`: d2f, `accept`: verifier, ...).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

BLOCK_RULES = ("low_confidence", "random", "threshold", "factor", "verifier")
# The published block-diffusion families' own decoding, on the model's block grid (decode/strategies/family.py)
FAMILY_RULES = ("sdar", "llada2", "fast_dllm_v2")
DECODERS = (*BLOCK_RULES, *FAMILY_RULES, "d2f", "isd", "ar", "flow")
EVERY = frozenset(DECODERS)
RULES = frozenset(BLOCK_RULES)
FAMILY = frozenset(FAMILY_RULES)
CONFIDENT = frozenset({"low_confidence", "threshold", "factor", "verifier", "d2f"})
SAMPLERS = frozenset(DECODERS)  # every decoder samples through a top-k / top-p filter
# Which model kinds each decoder runs on.
KINDS_OF = {**{r: ("diffusion", "block-diffusion") for r in BLOCK_RULES}, **{r: ("block-diffusion",) for r in FAMILY_RULES},
            "d2f": ("block-diffusion",), "isd": ("ar",), "ar": ("ar",), "flow": ("continuous",)}
# Caches, and the attention each one needs: approximate caches re-run a bidirectional model's columns,
# exact ones keep keys/values a causal or block-causal model never changes.
CACHE_ATTENTION = {"none": ("bidirectional", "block-causal", "causal"), "prefix": ("bidirectional",),
                   "dual": ("bidirectional",), "delayed": ("bidirectional",), "exact": ("block-causal", "causal")}
APPROXIMATE = ("prefix", "dual", "delayed")
DEFAULT_BLOCK_SIZE = 32
DELAYED_REFRESH = 8  # dKV-Cache's refresh interval
SEED_LIMIT = 2 ** 64
INT_LIMIT = 2 ** 31 - 1  # a count option's largest value
FLOW_STEPS = 64  # a continuous model's default passes (README "Continuous diffusion")
MIN_TEMPERATURE = 1e-3  # below it sampling overflows (logits / T): use 0 for greedy


@dataclass(frozen=True)
class Option:
    """One decoding option. `name` is the Python keyword and the HTTP field (`http` where OpenAI names it
    otherwise); the flag is `--name-with-dashes`."""

    name: str
    kind: type | str  # int, float, str, bool, or "gaps" (early commit: on/off, one gap or three)
    help: str
    decoders: frozenset[str] = EVERY
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    open_low: bool = False  # low itself is out of range
    open_high: bool = False
    implies: str | None = None  # the decoder it picks when the model's default does not take it
    cli: bool = True
    http: str | None = None  # the HTTP field when not `name`; "" = not an HTTP field

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def field_name(self) -> str:
        return self.name if self.http is None else self.http


def _range(low: float | None = None, high: float | None = None, open_low: bool = False,
           open_high: bool = False) -> dict[str, Any]:
    return {"low": low, "high": high, "open_low": open_low, "open_high": open_high}


OPTIONS: tuple[Option, ...] = (
    Option("strategy", str, "decoder: " + " | ".join(DECODERS) + " (default: the model's default)", choices=DECODERS),
    Option("max_new_tokens", int, "tokens to generate", **_range(1), http="max_tokens"),
    Option("temperature", float, "0: greedy; above 0: sample (diffusion: LLaDA's Gumbel noise)", **_range(0, 100)),
    Option("top_k", int, "sample from the k likeliest tokens (with temperature above 0)", SAMPLERS, **_range(1)),
    Option("top_p", float, "nucleus sampling mass (with temperature above 0)", SAMPLERS,
           **_range(0, 1, open_low=True)),
    Option("seed", int, "seed for sampling and random remasking (a batch's row i gets seed + i)",
           **_range(0, SEED_LIMIT - 1)),
    Option("stop_at_eos", bool, "end each answer at its first EOS", cli=False, http=""),
    Option("block_size", int, f"semi-autoregressive block length (default {DEFAULT_BLOCK_SIZE}; a block-diffusion "
           "model's own block size)", RULES | FAMILY, **_range(1)),
    Option("block_steps", int, "sdar, llada2: denoising steps per block (SDAR's denoising_steps, LLaDA2's steps; "
           "default: the block length)", frozenset({"sdar", "llada2"}), **_range(1)),
    Option("remasking", str, "sdar: which masks a step commits (dynamic: above the threshold, at least the step's "
           "quota; static: the quota's most confident; sequential: the quota's left-most)", frozenset({"sdar"}),
           choices=("dynamic", "static", "sequential")),
    Option("sub_block", int, "fast_dllm_v2: sub-block length decoded in turn inside a block (small_block_size; "
           "default 8, at most the block)", frozenset({"fast_dllm_v2"}), **_range(1)),
    Option("steps", int, "denoising steps over all blocks (default: one token per step); flow: passes from noise "
           f"to text (default {FLOW_STEPS})", frozenset({"low_confidence", "random", "flow"}), **_range(1),
           implies="low_confidence"),
    Option("sampler", str, "flow: deterministic ODE (DDIM) or stochastic ancestral steps (sde)", frozenset({"flow"}),
           choices=("ode", "sde"), implies="flow"),
    Option("threshold", float, "commit every position at least this sure (threshold 0.9, verifier 0.7; d2f's "
           "tau_conf 0.9; sdar 0.85, llada2 0.95, fast_dllm_v2 0.9)", frozenset({"threshold", "verifier", "d2f"}) | FAMILY,
           **_range(0, 1.01, open_low=True),
           implies="threshold"),
    Option("factor", float, "Fast-dLLM's factor rule f (1.0)", frozenset({"factor"}), **_range(0, 100, open_low=True),
           implies="factor"),
    Option("confidence", str, "how a rule scores proposals (prob)", CONFIDENT, choices=("prob", "margin", "entropy")),
    Option("cache", str, "KV cache: approximate prefix | dual | delayed (diffusion), exact (block diffusion, AR), "
           "none", RULES | FAMILY | {"ar", "d2f"}, choices=tuple(CACHE_ATTENTION)),
    Option("refresh_every", int, "with an approximate cache: recompute everything every K steps (delayed: 8)",
           RULES, **_range(1)),
    Option("early_commit", "gaps", "Prophet: commit all remaining masks once the top1-top2 logit gap clears GAPS "
           "(three, one per third of the answer, or one for all; on: 7.5,5,2.5)", RULES),
    Option("early_commit_pool", str, "with early_commit: pool the masked positions' gaps by their mean (Prophet) "
           "or require every one to clear the gap (min)", RULES, choices=("mean", "min")),
    Option("template", bool, "ICE: write the task's scaffolding (operators, =, the marker) into the reasoning "
           "section before decoding (arith-mdm)", RULES),
    Option("answer_exit", float, "ICE answer-first exit: once the answer section's masks reach this confidence, "
           "commit them and stop (arith-mdm)", RULES, **_range(0, 1, open_low=True)),
    Option("answer_exit_pool", str, "with answer_exit: the answer masks' mean confidence, or every one's (min)",
           RULES, choices=("mean", "min")),
    Option("verifier", str, "the AR model that vets each step (sort-ar-small)", frozenset({"verifier"}),
           implies="verifier"),
    Option("accept", float, "reject commits the verifier gives less than this probability (0.2)",
           frozenset({"verifier"}), **_range(0, 1, open_low=True, open_high=True), implies="verifier"),
    Option("verifier_rule", str, "reject each unlikely commit (prob) or every commit from the first one on (first)",
           frozenset({"verifier"}), choices=("prob", "first"), implies="verifier"),
    Option("add", float, "d2f: open a new block once the last one is this decoded (tau_add, 0.1)",
           frozenset({"d2f"}), **_range(0, 1.01, open_low=True), implies="d2f"),
    Option("activate", float, "d2f: fully activate a block once its predecessor is this decoded (tau_act, 0.95)",
           frozenset({"d2f"}), **_range(0, 1.01, open_low=True), implies="d2f"),
)
BY_NAME = {o.name: o for o in OPTIONS}
GENERAL = frozenset(o.name for o in OPTIONS if o.decoders == EVERY)

# What each decoder uses for the options a request leaves unset.
PRESETS: dict[str, dict[str, Any]] = {
    "low_confidence": {"confidence": "prob", "cache": "none"},
    "random": {"cache": "none"},
    "threshold": {"threshold": 0.9, "confidence": "prob", "cache": "none"},
    "factor": {"factor": 1.0, "confidence": "prob", "cache": "none"},
    "verifier": {"threshold": 0.7, "confidence": "prob", "cache": "none", "verifier": "sort-ar-small",
                 "accept": 0.2, "verifier_rule": "prob"},
    "d2f": {"threshold": 0.9, "add": 0.1, "activate": 0.95, "confidence": "prob", "cache": "exact"},
    "sdar": {"threshold": 0.85, "remasking": "dynamic", "cache": "exact"},
    "llada2": {"threshold": 0.95, "cache": "exact"},
    "fast_dllm_v2": {"threshold": 0.9, "cache": "exact"},
    "isd": {},
    "ar": {"cache": "exact"},
    "flow": {"steps": FLOW_STEPS, "sampler": "ode"},
}
# The decoding a model kind gets when no strategy is named: the fastest setting the benchmark showed to keep
# accuracy (README "Benchmark"). Naming a strategy opts out of all of it: `low_confidence` alone is vanilla.
DEFAULT_DECODING: dict[str, dict[str, Any]] = {
    "ar": {"strategy": "ar"},
    "diffusion": {"strategy": "threshold", "threshold": 0.9, "confidence": "entropy", "cache": "dual"},
    "block-diffusion": {"strategy": "d2f"},  # per-row blocks on the model's own grid, cached exactly
    "continuous": {"strategy": "flow"},
}  # a published family's folder names its own decoder instead (ModelConfig.native_decoder)

Namer = Callable[[str], str]


def python_name(name: str) -> str:
    return name


def flag_name(name: str) -> str:
    return BY_NAME[name].flag if name in BY_NAME else name


def http_name(name: str) -> str:
    return BY_NAME[name].field_name if name in BY_NAME else name


@dataclass(frozen=True)
class Decoding:
    """A request's decoding, resolved: every option the decoder uses has its value (None: unused)."""

    strategy: str
    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int | None = None
    stop_at_eos: bool = True
    top_k: int | None = None
    top_p: float | None = None
    block_size: int | None = None
    steps: int | None = None
    threshold: float | None = None
    factor: float | None = None
    confidence: str | None = None
    cache: str | None = None
    refresh_every: int | None = None
    early_commit: tuple[float, ...] | None = None
    early_commit_pool: str = "mean"
    verifier: Any = None  # a model name, or a model (Python callers)
    accept: float | None = None
    verifier_rule: str | None = None
    add: float | None = None
    activate: float | None = None
    block_steps: int | None = None
    remasking: str | None = None
    sub_block: int | None = None
    template: bool = False
    answer_exit: float | None = None
    answer_exit_pool: str = "mean"
    sampler: str | None = None
    given: frozenset[str] = field(default=frozenset(), compare=False)  # the options the request set itself
    # How the request names its options, for the refusals a decoding row raises once it sees the model's task.
    namer: Namer = field(default=python_name, compare=False, repr=False)

    def rule_options(self) -> dict[str, Any]:
        """The step rule's own constructor options (unmask.decode.registry)."""
        sampling = ("temperature", "top_k", "top_p")
        names = {"threshold": ("threshold", "confidence"), "factor": ("factor", "confidence"),
                 "low_confidence": ("confidence",), "random": (),
                 "verifier": ("threshold", "confidence", "accept", "verifier_rule"),
                 "sdar": ("threshold", "remasking", "block_steps", *sampling),
                 "llada2": ("threshold", "block_steps", *sampling),
                 "fast_dllm_v2": ("threshold", "sub_block", *sampling)}[self.strategy]
        return {n: getattr(self, n) for n in names}

    def verifier_name(self) -> str | None:
        if self.strategy != "verifier":
            return None
        return self.verifier if isinstance(self.verifier, str) else getattr(self.verifier, "name", "verifier")


def check_value(opt: Option, value: Any, namer: Namer) -> Any:
    """The value, converted where lossless (an int for a float option); ValueError naming the option otherwise."""
    name = namer(opt.name)
    if opt.kind == "gaps":
        return parse_gaps(value, name)
    if opt.name == "verifier" and hasattr(value, "config"):
        return value  # a model (Python callers)
    if opt.kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, not {value!r}")
        return value
    if opt.kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be a whole number, not {value!r}")
    elif opt.kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, not {value!r}")
        value = float(value)
        if value != value:
            raise ValueError(f"{name} must be a number, not NaN")
    elif not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {value!r}")
    if opt.choices is not None and value not in opt.choices:
        known = "known strategies" if opt.name == "strategy" else "known values"
        raise ValueError(f"unknown {name} {value!r}; {known}: {', '.join(opt.choices)}")
    if opt.low is not None and (value < opt.low or (opt.open_low and value == opt.low)):
        raise ValueError(f"{name} must be {'above' if opt.open_low else 'at least'} {fmt(opt.low)}, not {value}")
    if opt.high is not None and (value > opt.high or (opt.open_high and value == opt.high)):
        raise ValueError(f"{name} must be {'below' if opt.open_high else 'at most'} {fmt(opt.high)}, not {value}")
    if opt.kind is int and opt.high is None and value > INT_LIMIT:  # counts index tensors: keep them int32
        raise ValueError(f"{name} must be at most {INT_LIMIT}, not {value}")
    if opt.name == "temperature" and 0 < value < MIN_TEMPERATURE:
        raise ValueError(f"{name} must be 0 (greedy) or at least {MIN_TEMPERATURE}, not {value}")
    return value


def fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def parse_gaps(value: Any, name: str) -> tuple[float, ...] | None:
    """Early commit: False/None off, True the published gaps, one gap for every stage, or three."""
    from unmask.decode.early_commit import DEFAULT_GAPS

    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_GAPS
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, str):
        try:
            value = tuple(float(g) for g in value.split(","))
        except ValueError:
            raise ValueError(f"{name} takes one or three numbers like 7.5,5,2.5, not {value!r}") from None
    try:
        gaps = tuple(float(g) for g in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} takes true, one gap or three, not {value!r}") from None
    if len(gaps) not in (1, 3):
        raise ValueError(f"{name} takes one gap or three stage thresholds, not {len(gaps)}")
    if any(g != g or g < 0 for g in gaps):
        raise ValueError(f"{name} gaps must be numbers of at least 0, not {value!r}")
    return gaps * 3 if len(gaps) == 1 else gaps


def choose_strategy(config: Any, given: dict[str, Any], namer: Namer) -> tuple[str, dict[str, Any]]:
    """(strategy, the preset under the request's options) when the request names no strategy."""
    native = getattr(config, "native_decoder", None)
    default = {"strategy": native} if native else dict(DEFAULT_DECODING[config.kind])
    strategy = default.pop("strategy")
    if getattr(config, "default_template", False) and strategy in BY_NAME["template"].decoders:
        default["template"] = True  # applied only where the prompt fits it (in_place.answer_layout)
    foreign = [n for n in given if strategy not in BY_NAME[n].decoders]
    if not foreign:
        return strategy, default
    picks = {BY_NAME[n].implies for n in foreign}
    if None in picks or len(picks) > 1:
        orphan = next(n for n in foreign if BY_NAME[n].implies is None or len(picks) > 1)
        takers = ", ".join(d for d in DECODERS if d in BY_NAME[orphan].decoders and config.kind in KINDS_OF[d])
        if not takers:
            raise ValueError(f"{namer(orphan)} does not go with this model's default strategy {strategy!r}, and no "
                             f"strategy for this model's kind ({config.kind}) takes it")
        raise ValueError(f"{namer(orphan)} does not go with this model's default strategy {strategy!r}: name a "
                         f"strategy that takes it ({takers})")
    pick = picks.pop()
    if config.kind not in KINDS_OF[pick]:
        raise ValueError(f"{namer(foreign[0])} is an option of strategy {pick!r}: {kind_refusal(pick, config.kind)}")
    return pick, {}


def resolve(config: Any, options: Mapping[str, Any], namer: Namer = python_name) -> Decoding:
    """A request's options (None = unset) -> its Decoding, for a model with `config` (kind, attention, ahead,
    block_size). ValueError with one sentence naming the option when something cannot be honoured."""
    given: dict[str, Any] = {}
    for name, value in options.items():
        if name not in BY_NAME:
            raise ValueError(f"unknown option {namer(name)!r}; decoding options are "
                             f"{', '.join(namer(o.name) for o in OPTIONS)}")
        if value is not None:
            given[name] = check_value(BY_NAME[name], value, namer)
    if given.get("early_commit", 0) is None:  # early_commit=False: off, as if unset
        given.pop("early_commit")
    kind = config.kind
    strategy = given.pop("strategy", None)
    preset: dict[str, Any] = {}
    if strategy is None:
        strategy, preset = choose_strategy(config, {n: v for n, v in given.items() if n not in GENERAL}, namer)
    if kind not in KINDS_OF[strategy]:
        raise ValueError(kind_refusal(strategy, kind))
    for name in given:
        if strategy not in BY_NAME[name].decoders:
            takes = [namer(o.name) for o in OPTIONS if strategy in o.decoders and o.name not in GENERAL]
            raise ValueError(f"strategy {strategy!r} does not take {namer(name)} "
                             f"(it takes {', '.join(takes) or 'no options of its own'})")
    values = {**PRESETS[strategy], **preset, **given}
    if strategy in BLOCK_RULES and "cache" not in given and config.attention == "block-causal":
        values["cache"] = "exact"  # exact for a block-causal model: the same tokens, finished blocks never rerun
    check_combination(strategy, config, values, namer)
    if strategy in BLOCK_RULES + FAMILY_RULES and values.get("block_size") is None:
        values["block_size"] = config.block_size if kind == "block-diffusion" else DEFAULT_BLOCK_SIZE
        if values.get("template") or values.get("answer_exit") is not None:  # ICE: reasoning and answer together
            values["block_size"] = values.get("max_new_tokens", Decoding.max_new_tokens)
    if strategy in FAMILY_RULES:
        check_family(strategy, config, values, namer)
    if values.get("cache") == "delayed" and values.get("refresh_every") is None:
        values["refresh_every"] = DELAYED_REFRESH
    fields = {f.name for f in dataclasses.fields(Decoding)}
    return Decoding(strategy=strategy, given=frozenset(given), namer=namer, **{k: v for k, v in values.items() if k in fields})


def check_family(strategy: str, config: Any, v: dict[str, Any], namer: Namer) -> None:
    """A family rule decodes on the model's block grid: a fixed grid takes no other block size."""
    if v["block_size"] != config.block_size and not getattr(config, "flexible_blocks", False):
        raise ValueError(f"this model's blocks are fixed at {config.block_size} tokens: strategy {strategy!r} decodes "
                         f"on them, so {namer('block_size')} can only be {config.block_size}")
    if strategy == "fast_dllm_v2":
        v["sub_block"] = v.get("sub_block") or min(8, v["block_size"])
        if v["sub_block"] > v["block_size"]:
            raise ValueError(f"{namer('sub_block')} ({v['sub_block']}) must not exceed the block "
                             f"({v['block_size']} tokens)")


def kind_refusal(strategy: str, kind: str) -> str:
    if kind == "continuous":
        return f"this is a continuous (embedding-space) diffusion model: use strategy 'flow', not {strategy!r}"
    if strategy == "flow":
        return f"strategy 'flow' needs a continuous (embedding-space) diffusion model; this one is {kind}"
    if kind == "ar":
        return f"this is an autoregressive model: use strategy 'ar' (or 'isd'), not {strategy!r}"
    if strategy in ("ar", "isd"):
        return f"strategy {strategy!r} needs an autoregressive model; this one is {kind}"
    return f"strategy {strategy!r} needs a block-causal (block-diffusion) model; this one is {kind}"


def check_combination(strategy: str, config: Any, v: dict[str, Any], namer: Namer) -> None:
    """Rules between options, and between options and the model."""
    cache = v.get("cache")
    if cache is not None and config.attention not in CACHE_ATTENTION[cache]:
        if cache == "exact":
            raise ValueError(f"{namer('cache')} 'exact' needs a block-causal (block-diffusion) model; this one is "
                             f"{config.kind}: use prefix, dual or delayed")
        raise ValueError(f"{namer('cache')} {cache!r} is an approximate cache for bidirectional (diffusion) models; "
                         f"this one is {config.kind}: use exact or none")
    if strategy == "d2f" and cache != "exact":
        raise ValueError(f"strategy 'd2f' caches exactly on its own: {namer('cache')} can only be 'exact'")
    if v.get("refresh_every") is not None and cache not in APPROXIMATE:
        raise ValueError(f"{namer('refresh_every')} needs an approximate cache (prefix, dual or delayed)")
    if v.get("answer_exit_pool", "mean") != "mean" and v.get("answer_exit") is None:
        raise ValueError(f"{namer('answer_exit_pool')} pools the answer's confidence for the exit: set "
                         f"{namer('answer_exit')} too")
    if v.get("early_commit_pool", "mean") != "mean" and v.get("early_commit") is None:
        raise ValueError(f"{namer('early_commit_pool')} pools the gaps of early commit: set "
                         f"{namer('early_commit')} too")
    if strategy == "isd" and not getattr(config, "ahead", 0):
        raise ValueError("strategy 'isd' needs a model trained to propose ahead (config 'ahead' > 0), "
                         "e.g. the bundled sort-isd")
    if v.get("temperature", 0) == 0 and (v.get("top_k") is not None or v.get("top_p") is not None):
        which = namer("top_k") if v.get("top_k") is not None else namer("top_p")
        raise ValueError(f"{which} filters sampling: set {namer('temperature')} above 0 too")
