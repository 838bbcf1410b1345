"""serve.json, serve.md and serve.png from one `unmask bench --serve` run (nothing here measures)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def roles_of(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["role"] for r in rows))


def ratios(report: dict[str, Any]) -> dict[str, Any]:
    """Batching gain (16 clients over 1) for each model; each diffusion model over AR at every level."""
    by = {(r["role"], r["concurrency"]): r for r in report["rows"]}
    out: dict[str, Any] = {"batching_gain_16_over_1": {}, "diffusion_over_ar": {}}
    for role in roles_of(report["rows"]):
        one, sixteen = by.get((role, 1)), by.get((role, 16))
        if one and sixteen and one["throughput_tokens_per_s"]:
            out["batching_gain_16_over_1"][role] = sixteen["throughput_tokens_per_s"] / one["throughput_tokens_per_s"]
    for c in report["concurrency"]:
        d, a = by.get(("diffusion", c)), by.get(("ar", c))
        if d and a and a["throughput_tokens_per_s"]:
            out["diffusion_over_ar"][str(c)] = d["throughput_tokens_per_s"] / a["throughput_tokens_per_s"]
        b = by.get(("block-diffusion", c))
        if b and a and a["throughput_tokens_per_s"]:
            out.setdefault("block_diffusion_over_ar", {})[str(c)] = (b["throughput_tokens_per_s"]
                                                                    / a["throughput_tokens_per_s"])
    out["failed_requests"] = sum(r["failed"] for r in report["rows"])
    return out


def ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1e3:.0f}"


def serve_markdown(report: dict[str, Any]) -> str:
    lines = [f"## unmask bench --serve ({report['seconds_per_level']:.0f} s per level, closed-loop streaming clients)",
             "", "| Model | Clients | Requests | Failed | Throughput (tok/s) | TTFT p50 / p99 (ms) | "
                 "Latency p50 / p99 (ms) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['model']} ({r['role']}) | {r['concurrency']} | {r['requests']} | {r['failed']} | "
                     f"{r['throughput_tokens_per_s']:.0f} | {ms(r['ttft_p50_s'])} / {ms(r['ttft_p99_s'])} | "
                     f"{ms(r['latency_p50_s'])} / {ms(r['latency_p99_s'])} |")
    rat = report.get("ratios") or ratios(report)
    lines += [""] + [f"- batching gain, 16 clients over 1, {k}: {v:.2f}x" for k, v in rat["batching_gain_16_over_1"].items()]
    lines += [f"- diffusion over AR throughput at {c} clients: {v:.2f}x" for c, v in rat["diffusion_over_ar"].items()]
    lines += [f"- block diffusion over AR throughput at {c} clients: {v:.2f}x"
              for c, v in rat.get("block_diffusion_over_ar", {}).items()]
    lines += [f"- failed requests: {rat['failed_requests']}"]
    if report.get("engine_only"):
        lines += ["", "The same prompts and options straight into the engine, no HTTP (completion tokens/s; "
                      "requests run to completion with at most C in flight):", "",
                  "| Model | In flight (C) | Requests | Throughput (tok/s) |", "|---|---:|---:|---:|"]
        lines += [f"| {r['model']} ({r['role']}) | {r['concurrency']} | {r['requests']} | "
                  f"{r['throughput_tokens_per_s']:.0f} |" for r in report["engine_only"]]
        by = {(r["role"], r["concurrency"]): r["throughput_tokens_per_s"] for r in report["engine_only"]}
        lines += [""] + [f"- engine alone, 16 in flight over 1, {role}: {by[(role, 16)] / by[(role, 1)]:.2f}x"
                         for role in roles_of(report["engine_only"]) if (role, 1) in by and (role, 16) in by]
    threads = {r["model"]: r.get("server_threads") for r in report["rows"]}
    lines += ["", "Server CPU threads: " + ", ".join(f"{m} {t if t is not None else '?'}" for m, t in threads.items())
              + "; the clients run in the benchmark's process on the same machine.", ""]
    return "\n".join(lines)


def write_serve_report(report: dict[str, Any], out_dir: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    report["ratios"] = ratios(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "serve.json").write_text(json.dumps(report, indent=2))
    (out_dir / "serve.md").write_text(serve_markdown(report))
    fig = Figure(figsize=(12, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    panels = [("throughput_tokens_per_s", "throughput (tokens/s)"), ("ttft_p50_s", "time to first token p50 (s)"),
              ("latency_p99_s", "latency p99 (s)")]
    for i, (key, label) in enumerate(panels, 1):
        ax = fig.add_subplot(1, 3, i)
        for role in roles_of(report["rows"]):
            rows = [r for r in report["rows"] if r["role"] == role]
            ax.plot([r["concurrency"] for r in rows], [r[key] or 0 for r in rows], "s--" if role == "ar" else "o-",
                    label=f"{rows[0]['model']} ({role})")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "serve.png")
