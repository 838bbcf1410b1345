"""Latency against the requested output length: the same sort prompts asked for 64, 128 and 192 tokens.

Sort answers end at EOS after at most ~36 tokens, so this measures what a request for a long output
costs when the answer is short, which is where the decoders differ most. The AR twin and the
block-causal models (block by block or the D2F pipeline, with exact caches) stop at EOS and pay only for
what they produce. A masked-diffusion model decoded in semi-autoregressive blocks with `stop_at_eos` also
stops after the block that holds EOS, but every uncached step runs the whole window. Decoded as one block
over the whole window (LLaDA's `generate` with block_length = gen_length, the baseline the published
speed-ups are measured against) it denoises every position, one per step. 192 is the longest window the
bundled models' context (256 positions) leaves room for after the longest prompts.

Each row keeps the main table's options; exact match is scored on the timed calls themselves.
"""
from __future__ import annotations

import sys
import time
from typing import Any

import torch
from tqdm import tqdm

from unmask.bench.settings import Setting
from unmask.data.sort import Example, SortTask
from unmask.generation import generate

GEN_LENGTHS = (64, 128, 192)
# AR, vanilla both ways, the fastest sort-mdm row within a point of AR, the block-causal rows, SDTT's fast row.
SWEEP_KEYS = ("ar", "vanilla", "vanilla-window", "threshold0.95-entropy+dual", "bd+d2f", "d2f+exact", "d2f",
              "d2f-entropy0.95", "sdtt+entropy+dual")
WINDOW_VANILLA = Setting("vanilla-window", "low_confidence, 1 token/step, one block over the whole window",
                         "diffusion", {"strategy": "low_confidence"})


def sweep_settings(settings: list[Setting]) -> list[Setting]:
    by_key = {s.key: s for s in settings}
    if "vanilla" in by_key:
        by_key["vanilla-window"] = WINDOW_VANILLA
    return [by_key[k] for k in SWEEP_KEYS if k in by_key]


def options_at(setting: Setting, length: int) -> dict[str, Any]:
    opts = setting.gen_kwargs()
    if setting.key == WINDOW_VANILLA.key:
        opts["block_size"] = length
    return opts


def run_gen_lengths(loaded: dict[str, torch.nn.Module], task: SortTask, settings: list[Setting],
                    examples: list[Example], lengths: tuple[int, ...] = GEN_LENGTHS, progress: bool = True
                    ) -> dict[str, Any]:
    """Batch-1 `generate` per setting and requested length, settings interleaved per call (start rotated)
    after one untimed warm-up each; returns {"lengths", "examples", "rows": one per setting and length}."""
    chosen = sweep_settings(settings)

    def prompt(model: torch.nn.Module, ex: Example) -> torch.Tensor:
        return torch.tensor([task.prompt_ids(model.tokenizer, ex.prompt)], dtype=torch.long)  # (1, P)

    for s in chosen:
        generate(loaded[s.model], prompt(loaded[s.model], examples[0]), max_new_tokens=lengths[0],
                 **options_at(s, lengths[0]))
    calls: dict[tuple[str, int], list[tuple[float, int, int, bool]]] = {(s.key, n): [] for s in chosen for n in lengths}
    jobs = [(n, ex) for n in lengths for ex in examples]
    for i, (n, ex) in enumerate(tqdm(jobs, desc="output length", disable=not progress, file=sys.stderr,
                                     leave=False)):
        for s in chosen[i % len(chosen):] + chosen[:i % len(chosen)]:
            model = loaded[s.model]
            t0 = time.perf_counter()
            out = generate(model, prompt(model, ex), max_new_tokens=n, **options_at(s, n))
            dt = time.perf_counter() - t0
            calls[(s.key, n)].append((dt, out.n_tokens, out.nfe, task.score(model.tokenizer.decode(out.sequences[0]),
                                                                             ex)))
    rows = []
    for s in chosen:
        for n in lengths:
            c = calls[(s.key, n)]
            rows.append({"key": s.key, "label": s.label, "model": s.model, "options": options_at(s, n),
                         "max_new_tokens": n, "latency_s_mean": sum(x[0] for x in c) / len(c),
                         "latency_s_median": sorted(x[0] for x in c)[len(c) // 2],
                         "nfe_mean": sum(x[2] for x in c) / len(c), "output_tokens_mean": sum(x[1] for x in c) / len(c),
                         "exact_match": sum(x[3] for x in c) / len(c)})
    return {"lengths": list(lengths), "examples": len(examples), "rows": rows}


def gen_length_markdown(sweep: dict[str, Any]) -> list[str]:
    """The sweep as a table (mean latency, exact match, forwards) and each row's speed-up over both vanillas."""
    lengths = sweep["lengths"]
    by = {(r["key"], r["max_new_tokens"]): r for r in sweep["rows"]}
    keys = list(dict.fromkeys(r["key"] for r in sweep["rows"]))
    labels = {r["key"]: r["label"] for r in sweep["rows"]}
    lines = [f"### Latency against requested output length (batch 1, {sweep['examples']} held-out prompts of the "
             "longest lists; answers end at EOS after ~36 tokens; exact match on the timed calls)", "",
             "| Setting | " + " | ".join(f"max_new_tokens {n}" for n in lengths) + " |",
             "|---|" + "---|" * len(lengths)]
    for k in keys:
        cells = [f"{by[(k, n)]['latency_s_mean'] * 1e3:.1f} ms, {by[(k, n)]['exact_match'] * 100:.0f}% exact, "
                 f"{by[(k, n)]['nfe_mean']:.1f} NFE" for n in lengths]
        lines.append(f"| {labels[k]} | " + " | ".join(cells) + " |")
    lines.append("")
    for base in ("vanilla-window", "ar"):  # the published speed-ups' baseline, and the AR twin
        if (base, lengths[0]) not in by:
            continue
        exact = ", ".join(f"{by[(base, n)]['exact_match'] * 100:.0f}%" for n in lengths)
        lines.append(f"Faster per request than {labels[base]} (its exact match: {exact}):")
        lines.append("")
        for k in keys:
            if k == base:
                continue
            ratios = [by[(base, n)]["latency_s_mean"] / by[(k, n)]["latency_s_mean"] for n in lengths]
            lines.append(f"- {labels[k]}: " + ", ".join(f"{r:.2f}x at {n}" for r, n in zip(ratios, lengths)))
        lines.append("")
    return lines
