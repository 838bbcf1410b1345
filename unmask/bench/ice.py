"""`unmask bench --ice`: in-place reasoning (ICE) on the arith task, against the AR twin and a diffusion model
trained without reasoning, in one run.

Rows: AR with reasoning; MDM without reasoning (vanilla, and its default fast decoding); MDM with
reasoning (vanilla in semi-autoregressive blocks, and the default fast decoding); ICE, the canvas decoded
in place as one block (vanilla, with the template, with answer-first exit, with both; and the fast
default with the template, with and without the exit). The exit thresholds are chosen on the validation
split (fresh training-distribution examples, never a held-out prompt): among TAUS, the one with the
fewest forwards per answer whose validation accuracy is within 1 point of the same decoding without the
exit. Accuracy and forwards come from `evaluate_sort` (batch 32, every row refilled at once, so forwards
per answer equal batch-1 ones); tokens/s from batch-1 `unmask.generate` calls, settings interleaved.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from unmask.bench.harness import environment
from unmask.bench.settings import Setting
from unmask.evaluation import evaluate_sort, task_of
from unmask.generation import generate
from unmask.models.checkpoints import load_model
from unmask.threads import choose_threads

MODELS = {"mdm": "arith-mdm", "ar": "arith-ar", "direct": "arith-mdm-direct"}
TAUS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
FAST = {"strategy": "threshold", "threshold": 0.9, "confidence": "entropy", "cache": "dual"}  # the diffusion default
# (arith-mdm's default adds the template: ModelConfig.default_template)


def settings(window: int) -> list[Setting]:
    one_block = {"block_size": window}
    vanilla = {"strategy": "low_confidence", **one_block}
    return [Setting("ar", "AR with reasoning (greedy, KV cache)", "ar", {"strategy": "ar"}),
            Setting("direct", "MDM without reasoning, vanilla", "direct", {"strategy": "low_confidence"}),
            Setting("direct-fast", "MDM without reasoning, default (threshold 0.9 entropy + dual)", "direct", {}),
            Setting("mdm", "MDM with reasoning, vanilla (blocks of 32)", "mdm", {"strategy": "low_confidence"}),
            Setting("mdm-fast", "MDM with reasoning, threshold 0.9 entropy + dual, blocks of 32", "mdm", dict(FAST)),
            Setting("ice", "ICE in place, vanilla (one block)", "mdm", vanilla),
            Setting("ice+template", "ICE + template, vanilla", "mdm", {**vanilla, "template": True}),
            Setting("ice-fast+template", "ICE + template, threshold 0.9 entropy + dual (arith-mdm's default)", "mdm",
                    {**FAST, **one_block, "template": True})]


EXITS = {"ice": "ice+exit", "ice+template": "ice+template+exit", "ice-fast+template": "ice-fast+template+exit"}


def choose_exit(model: torch.nn.Module, task: Any, base: Setting, limit: int, progress: bool) -> dict[str, Any]:
    """The exit threshold for `base`, on the validation split: fewest forwards within 1 point of no exit."""
    def run(options: dict[str, Any]) -> dict[str, Any]:
        res = evaluate_sort(model, task, split="validation", limit=limit, **options)
        return {"accuracy": res["accuracy"], "nfe_mean": res["nfe_mean"]}
    full = run(base.options)
    sweep = {}
    for tau in tqdm(TAUS, desc=f"{base.key} exit", disable=not progress, file=sys.stderr, leave=False):
        sweep[tau] = run({**base.options, "answer_exit": tau})
    ok = [t for t in TAUS if sweep[t]["accuracy"] >= full["accuracy"] - 0.01]
    chosen = min(ok, key=lambda t: sweep[t]["nfe_mean"]) if ok else max(TAUS)
    return {"without_exit": full, "sweep": sweep, "chosen": chosen, "within_a_point": bool(ok),
            "validation_examples": limit}


def run_ice_bench(*, quick: bool, out_dir: Path, progress: bool = True, device: str = "cpu") -> dict[str, Any]:
    t0 = time.perf_counter()
    loaded = {role: load_model(name, device=device) for role, name in MODELS.items()}
    for m in loaded.values():
        choose_threads(m)
    tasks = {role: task_of(m) for role, m in loaded.items()}
    window = tasks["mdm"].max_window
    rows = settings(window)
    limit, val_limit, timed = (100, 100, 10) if quick else (None, 500, 60)
    choices = {}
    for s in list(rows):
        if s.key in EXITS:
            info = choose_exit(loaded["mdm"], tasks["mdm"], s, val_limit, progress)
            choices[EXITS[s.key]] = info
            how = "chosen on validation" if info["within_a_point"] else \
                "the highest: none kept validation accuracy within a point"
            rows.append(Setting(EXITS[s.key], f"{s.label} + answer exit {info['chosen']} ({how})",
                                "mdm", {**s.options, "answer_exit": info["chosen"]}))
    results = []
    for s in tqdm(rows, desc="accuracy", disable=not progress, file=sys.stderr):
        res = evaluate_sort(loaded[s.model], tasks[s.model], limit=limit, **s.options)
        results.append({"key": s.key, "label": s.label, "model": MODELS[s.model], "options": s.options,
                        "n": res["n"], "accuracy": res["accuracy"], "forwards_per_answer": res["nfe_mean"],
                        "max_new_tokens": res["max_new_tokens"]})
    speed = batch1_speed(loaded, tasks, rows, timed, progress)
    for r in results:
        r.update(speed[r["key"]])
    report = {"quick": quick, "environment": environment(), "models": MODELS, "exit_choice": choices,
              "task": {k: v for k, v in vars(tasks["mdm"]).items() if not k.startswith("_")},
              "settings": results, "wall_seconds": time.perf_counter() - t0}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ice.json").write_text(json.dumps(report, indent=2, default=str))
    (out_dir / "ice.md").write_text(markdown(report))
    if progress:
        print(markdown(report), file=sys.stderr)
    return report


def batch1_speed(loaded: dict[str, torch.nn.Module], tasks: dict[str, Any], rows: list[Setting], n: int,
                 progress: bool) -> dict[str, dict[str, float]]:
    """Batch-1 tokens/s over the first `n` held-out examples (tokens up to and including EOS), interleaved."""
    stats = {s.key: [0.0, 0] for s in rows}
    for s in rows:  # warm-up
        task, model = tasks[s.model], loaded[s.model]
        generate(model, torch.tensor([task.prompt_ids(model.tokenizer, task.test_examples[0].prompt)]),
                 max_new_tokens=task.max_window, **s.options)
    for i in tqdm(range(n), desc="batch 1", disable=not progress, file=sys.stderr, leave=False):
        for s in rows[i % len(rows):] + rows[:i % len(rows)]:
            task, model = tasks[s.model], loaded[s.model]
            ids = torch.tensor([task.prompt_ids(model.tokenizer, task.test_examples[i].prompt)])
            t = time.perf_counter()
            out = generate(model, ids, max_new_tokens=task.max_window, **s.options)
            stats[s.key][0] += time.perf_counter() - t
            stats[s.key][1] += out.n_tokens
    return {k: {"batch1_tokens_per_second": tok / sec, "batch1_latency_ms": 1e3 * sec / n}
            for k, (sec, tok) in stats.items()}


def markdown(report: dict[str, Any]) -> str:
    lines = [f"## unmask bench --ice ({'quick' if report['quick'] else 'full'})", "",
             "| Setting | Model | Accuracy | Forwards / answer | Batch-1 tokens/s | Batch-1 latency |",
             "|---|---|---:|---:|---:|---:|"]
    for r in report["settings"]:
        lines.append(f"| {r['label']} | {r['model']} | {r['accuracy']:.3f} | {r['forwards_per_answer']:.1f} | "
                     f"{r['batch1_tokens_per_second']:.0f} | {r['batch1_latency_ms']:.1f} ms |")
    lines += ["", "The issue's two comparisons, on these held-out rows:"]
    lines += [f"- {line}" for line in comparisons(report["settings"])]
    lines += ["", "Exit thresholds (validation split):"]
    for key, info in report["exit_choice"].items():
        sweep = ", ".join(f"{t}: {v['accuracy']:.3f} / {v['nfe_mean']:.1f}" for t, v in info["sweep"].items())
        lines.append(f"- {key}: chose {info['chosen']}; without exit {info['without_exit']['accuracy']:.3f} / "
                     f"{info['without_exit']['nfe_mean']:.1f}; accuracy / forwards by tau: {sweep}")
    return "\n".join(lines) + "\n"


def comparisons(settings: list[dict[str, Any]]) -> list[str]:
    """Each exit row against the same decoding without the exit (accuracy points, forwards saved), and the
    best in-place reasoning row that spends no more forwards than each no-reasoning row, against it."""
    by_key = {r["key"]: r for r in settings}
    lines = []
    for base, exit_key in EXITS.items():
        if base in by_key and exit_key in by_key:
            b, e = by_key[base], by_key[exit_key]
            lines.append(f"{exit_key}: {100 * (e['accuracy'] - b['accuracy']):+.1f} points against {base}, "
                         f"{b['forwards_per_answer'] / e['forwards_per_answer']:.2f}x fewer forwards "
                         f"({b['forwards_per_answer']:.1f} -> {e['forwards_per_answer']:.1f})")
    reasoning = [r for r in settings if r["model"] == MODELS["mdm"]]
    for d in (r for r in settings if r["model"] == MODELS["direct"]):
        within = [r for r in reasoning if r["forwards_per_answer"] <= d["forwards_per_answer"]]
        if not within:
            lines.append(f"no reasoning row spends at most {d['key']}'s {d['forwards_per_answer']:.1f} forwards")
            continue
        best = max(within, key=lambda r: r["accuracy"])
        lines.append(f"{best['key']} ({best['forwards_per_answer']:.1f} forwards) against {d['key']} "
                     f"({d['forwards_per_answer']:.1f}): {100 * (best['accuracy'] - d['accuracy']):+.1f} points")
    return lines
