"""lm-eval's generation keywords (a task's `generation_kwargs`, `--gen_kwargs`) as unmask decoding options.

until -> stop strings (the engine ends a request once its text holds one; the text is cut before it),
max_gen_toks -> max_new_tokens (absent: the model's own default length), do_sample / temperature -> greedy
or a sampling temperature, top_k / top_p / seed as they are. Any other keyword is refused by name: an
ignored one would score a different decoding than the task asked for.
"""
from __future__ import annotations

from typing import Any, Mapping

KEYWORDS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p", "seed")
# What a request sets itself; the model's arguments may not preset them (see UnmaskLM).
PER_REQUEST = {"max_new_tokens": "max_gen_toks", "temperature": "do_sample and temperature",
               "top_k": "top_k", "top_p": "top_p"}
DEFAULT_SAMPLING_TEMPERATURE = 1.0  # do_sample with no temperature: Hugging Face's default, as lm-eval assumes


def gen_name(name: str) -> str:
    """A decoding option as a request names it (a Namer for unmask.decode.spec's refusals)."""
    return "max_gen_toks" if name == "max_new_tokens" else name


def request_decoding(gen_kwargs: Mapping[str, Any], default_new_tokens: int, seed: int
                     ) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(unmask decoding options, stop strings) of one request's generation keywords.

    seed: the request's seed when it names none (unmask then gives a batch's row i the seed + i)."""
    if not isinstance(gen_kwargs, Mapping):
        raise ValueError(f"generation keywords must be a mapping, not {type(gen_kwargs).__name__}")
    unknown = [k for k in gen_kwargs if k not in KEYWORDS]
    if unknown:
        raise ValueError(f"unmask does not take the generation keyword {unknown[0]!r}; it takes "
                         f"{', '.join(KEYWORDS)}")
    options: dict[str, Any] = {"max_new_tokens": gen_kwargs.get("max_gen_toks", default_new_tokens)}
    temperature = sampling_temperature(gen_kwargs.get("do_sample"), gen_kwargs.get("temperature"))
    if temperature is not None:
        options["temperature"] = temperature
    for name in ("top_k", "top_p"):
        if gen_kwargs.get(name) is not None:
            options[name] = gen_kwargs[name]
    options["seed"] = seed if gen_kwargs.get("seed") is None else gen_kwargs["seed"]
    return options, stop_strings(gen_kwargs.get("until"))


def sampling_temperature(do_sample: Any, temperature: Any) -> float | None:
    """The temperature to pass (None: greedy, unmask's default); a contradiction is refused."""
    if do_sample is not None and not isinstance(do_sample, bool):
        raise ValueError(f"do_sample must be true or false, not {do_sample!r}")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))):
        raise ValueError(f"temperature must be a number, not {temperature!r}")
    if do_sample is None:
        return None if temperature is None else float(temperature)
    if not do_sample:
        if temperature:
            raise ValueError(f"do_sample is false (greedy) but temperature is {temperature}: set do_sample=true "
                             "to sample, or temperature=0")
        return None
    if temperature is None:
        return DEFAULT_SAMPLING_TEMPERATURE
    if temperature == 0:
        raise ValueError("do_sample is true but temperature is 0 (greedy): give a temperature above 0")
    return float(temperature)


def stop_strings(until: Any) -> tuple[str, ...]:
    if until is None:
        return ()
    if isinstance(until, str):
        until = [until]
    if not isinstance(until, (list, tuple)) or not all(isinstance(s, str) for s in until):
        raise ValueError(f"until must be a string or a list of strings, not {until!r}")
    return tuple(until)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """The text before the earliest stop string (all of it when none occurs)."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[:min(hits)] if hits else text
