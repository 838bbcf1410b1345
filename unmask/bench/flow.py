"""`unmask bench --flow`: continuous (embedding-space) diffusion against masked diffusion and AR on Shakespeare,
in one run.

Likelihood: each model's held-out figure on the same windows (`unmask eval`'s code): the AR twin's exact
NLL, the masked-diffusion ELBO bound, the flow's ODE bound (Hutchinson, RK4), nats and bits per character;
each bound averages DRAWS draws per window, with its standard error and the flow / MDM ratio's.
Samples: batch-1 generations after held-out prompts at a sweep of sampling steps (the flow's passes from
noise; the MDM's low-confidence steps over one block), settings interleaved, with the AR twin's NLL of
each sample (the judge every setting shares, as `unmask bench`'s text part does) and its distinct
characters (a degenerate sample can score well), latency and tokens/s; the first prompt's samples are
printed whole.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from unmask.bench.harness import environment
from unmask.bench.text import judge_nll, text_prompts
from unmask.evaluation import evaluate_text, task_of
from unmask.generation import generate
from unmask.models.checkpoints import load_model
from unmask.threads import choose_threads

MODELS = {"ar": "shakespeare-ar", "mdm": "shakespeare-mdm", "flow": "shakespeare-flow"}
NEW_TOKENS = 128
FLOW_STEPS = (8, 16, 32, 64, 128)
MDM_STEPS = (16, 32, 64, 128)
DRAWS = 2  # Monte Carlo draws per window of each bound: the fewest that give a standard error


def sweep(quick: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """(key, model role, options) of every sampled setting."""
    flow = (8, 32, 128) if quick else FLOW_STEPS
    mdm = (32, 128) if quick else MDM_STEPS
    rows = [("ar", "ar", {"strategy": "ar"})]
    rows += [(f"mdm-{k}", "mdm", {"strategy": "low_confidence", "steps": k, "block_size": NEW_TOKENS}) for k in mdm]
    rows += [(f"flow-{k}", "flow", {"strategy": "flow", "steps": k}) for k in flow]
    rows += [(f"flow-sde-{flow[-2]}", "flow", {"strategy": "flow", "steps": flow[-2], "sampler": "sde"})]
    return rows


def run_flow_bench(*, quick: bool, out_dir: Path, progress: bool = True, models: dict[str, str] | None = None
                   ) -> dict[str, Any]:
    t0 = time.perf_counter()
    names = {**MODELS, **(models or {})}
    loaded = {role: load_model(name) for role, name in names.items()}
    for m in loaded.values():
        choose_threads(m)
    windows = 16 if quick else 64
    likelihood = {}
    for role in tqdm(names, desc="likelihood", disable=not progress, file=sys.stderr):
        draws = 1 if loaded[role].config.kind == "ar" else DRAWS  # the AR NLL is exact
        res = evaluate_text(loaded[role], task_of(loaded[role]), limit=windows, batch_size=16, draws=draws)
        likelihood[role] = {k: v for k, v in res.items() if k not in ("task", "model")}
    samples = sample_sweep(loaded, sweep(quick), 2 if quick else 5, progress)
    report = {"quick": quick, "environment": environment(), "models": names,
              "params": {role: sum(p.numel() for p in m.parameters()) for role, m in loaded.items()},
              "train_minutes": {role: (getattr(m, "meta", {}) or {}).get("train_minutes") for role, m in loaded.items()},
              "likelihood": likelihood, "new_tokens": NEW_TOKENS, "samples": samples,
              "wall_seconds": time.perf_counter() - t0}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "flow.json").write_text(json.dumps(report, indent=2))
    (out_dir / "flow.md").write_text(markdown(report))
    plot(report, out_dir / "flow.png")
    if progress:
        print(markdown(report), file=sys.stderr)
    return report


@torch.no_grad()
def sample_sweep(loaded: dict[str, torch.nn.Module], rows: list[tuple[str, str, dict[str, Any]]], k: int,
                 progress: bool) -> list[dict[str, Any]]:
    judge = loaded["ar"]
    prompts = text_prompts(judge, k)
    for _, role, opts in rows:  # warm-up, untimed
        generate(loaded[role], prompts[:1], max_new_tokens=NEW_TOKENS, seed=0, **opts)
    calls: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in rows}
    texts: dict[str, str] = {}
    for i in tqdm(range(k), desc="samples", disable=not progress, file=sys.stderr, leave=False):
        for key, role, opts in rows[i % len(rows):] + rows[:i % len(rows)]:
            prompt = prompts[i:i + 1]
            t = time.perf_counter()
            out = generate(loaded[role], prompt, max_new_tokens=NEW_TOKENS, seed=i, **opts)
            dt = time.perf_counter() - t
            sample = out.sequences[0]
            calls[key].append({"seconds": dt, "tokens": len(sample), "nfe": out.nfe,
                               "nll": judge_nll(judge, prompt, sample), "distinct": len(set(sample))})
            if i == 0:
                texts[key] = judge.tokenizer.decode(prompt[0].tolist()) + " ||| " + loaded[role].tokenizer.decode(sample)
    out = []
    for key, role, opts in rows:
        c = calls[key]
        secs, toks = sum(x["seconds"] for x in c), sum(x["tokens"] for x in c)
        nlls = [x["nll"] for x in c if x["nll"] is not None]
        out.append({"key": key, "model": role, "options": opts, "n": len(c), "latency_s_mean": secs / len(c),
                    "tokens_per_second": toks / secs if secs else 0.0, "nfe_mean": sum(x["nfe"] for x in c) / len(c),
                    "judge_nll": sum(nlls) / len(nlls) if nlls else None,
                    "distinct_chars_mean": sum(x["distinct"] for x in c) / len(c), "first_sample": texts[key]})
    return out


def ratio_with_stderr(top: dict[str, Any], bottom: dict[str, Any]) -> tuple[float, float | None]:
    """top / bottom of two `evaluate_text` figures and its standard error (first order in the two independent
    Monte Carlo errors), or None where either figure has no standard error."""
    ratio = top["loss"] / bottom["loss"]
    if "loss_stderr" not in top or "loss_stderr" not in bottom:
        return ratio, None
    return ratio, ratio * math.hypot(top["loss_stderr"] / top["loss"], bottom["loss_stderr"] / bottom["loss"])


def markdown(report: dict[str, Any]) -> str:
    lik = report["likelihood"]
    lines = [f"## unmask bench --flow ({'quick' if report['quick'] else 'full'})", "",
             f"Held-out likelihood ({next(iter(lik.values()))['n']} windows of "
             f"{next(iter(lik.values()))['seq_len']} characters, the same for every model):", "",
             "| Model | Parameters | Training | Figure | Draws | Nats / char | Bits / char |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for role, res in lik.items():
        minutes = report["train_minutes"].get(role)
        se = f" ± {res['loss_stderr']:.3f}" if "loss_stderr" in res else ""
        lines.append(f"| {report['models'][role]} | {report['params'][role]:,} | "
                     f"{f'{minutes:.1f} min' if minutes is not None else '?'} | {res['loss_kind']} | "
                     f"{res.get('draws', 'exact')} | {res['loss']:.3f}{se} | {res['bits_per_token']:.3f} |")
    lines += ["", "± one standard error of the Monte Carlo mean, from the spread between draws (the same windows)."]
    if "flow" in lik and "mdm" in lik:
        ratio, se = ratio_with_stderr(lik["flow"], lik["mdm"])
        lines += [f"Flow bound / MDM ELBO: {ratio:.3f}x{f' ± {se:.3f}' if se is not None else ''}; "
                  f"flow bound / AR NLL: {lik['flow']['loss'] / lik['ar']['loss']:.3f}x."]
    if "flow" in lik:
        f = lik["flow"]
        lines.append(f"Flow bound terms (nats/char): reconstruction {f['reconstruction_per_token']:.3f}, prior "
                     f"{f['prior_per_token']:.2f}, volume {f['volume_per_token']:.2f}, noise {f['noise_per_token']:.2f} "
                     f"({f['ode_steps']} RK4 steps, {f['divergence']} divergence).")
    lines += ["", f"Batch-1 samples of {report['new_tokens']} characters after held-out prompts (judge: "
                  f"{report['models']['ar']}'s NLL of the sample, nats/char):", "",
              "| Setting | Forwards | Latency | Tokens/s | Judge NLL | Distinct chars |", "|---|---:|---:|---:|---:|---:|"]
    for s in report["samples"]:
        nll = f"{s['judge_nll']:.3f}" if s["judge_nll"] is not None else "-"
        lines.append(f"| {s['key']} | {s['nfe_mean']:.0f} | {1e3 * s['latency_s_mean']:.0f} ms | "
                     f"{s['tokens_per_second']:.0f} | {nll} | {s['distinct_chars_mean']:.1f} |")
    lines += ["", "First prompt's samples (prompt ||| sample):", ""]
    lines += [f"- {s['key']}: `{s['first_sample']!r}`" for s in report["samples"]]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), dpi=110)
    speed, quality = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for role, marker in (("mdm", "s"), ("flow", "o")):
        rows = [s for s in report["samples"] if s["model"] == role and s["options"].get("sampler") != "sde"]
        steps = [s["options"]["steps"] for s in rows]
        speed.plot(steps, [1e3 * s["latency_s_mean"] for s in rows], marker=marker, label=report["models"][role])
        quality.plot(steps, [s["judge_nll"] or math.nan for s in rows], marker=marker, label=report["models"][role])
    ar = next(s for s in report["samples"] if s["model"] == "ar")
    speed.axhline(1e3 * ar["latency_s_mean"], color="grey", ls="--", label=f"{report['models']['ar']} (greedy)")
    quality.axhline(ar["judge_nll"] or math.nan, color="grey", ls="--", label=f"{report['models']['ar']} (greedy)")
    for ax, label in ((speed, "batch-1 latency (ms)"), (quality, "judge NLL of the sample (nats/char)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sampling steps")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    speed.set_title(f"{report['new_tokens']} new characters")
    fig.tight_layout()
    fig.savefig(path)
