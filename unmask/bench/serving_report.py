"""serve.json, serve.md and serve.png from one `unmask bench --serve` run (nothing here measures)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

AR_ROLE = "ar"


def roles_of(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["role"] for r in rows))


def ratios(report: dict[str, Any]) -> dict[str, Any]:
    """Per decoder: batching gain (most clients over 1) over HTTP and in the engine alone; throughput over
    the AR twin's at every level; HTTP over the engine alone with as many in flight."""
    levels = report["concurrency"]
    lo, hi = min(levels), max(levels)
    http = {(r["role"], r["concurrency"]): r["throughput_tokens_per_s"] for r in report["rows"]}
    alone = {(r["role"], r["concurrency"]): r["throughput_tokens_per_s"] for r in report.get("engine_only", [])}
    static = {(r["role"], r["concurrency"]): r.get("static_tokens_per_s") for r in report.get("engine_only", [])}

    def over(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    out: dict[str, Any] = {"levels": [lo, hi], "http_gain": {}, "engine_gain": {}, "over_ar": {},
                           "http_over_engine": {}, "engine_over_static": {}}
    for role in roles_of(report["rows"] + report.get("engine_only", [])):
        out["http_gain"][role] = over(http.get((role, hi)), http.get((role, lo)))
        out["engine_gain"][role] = over(alone.get((role, hi)), alone.get((role, lo)))
        out["over_ar"][role] = {str(c): over(http.get((role, c)), http.get((AR_ROLE, c))) for c in levels}
        out["http_over_engine"][role] = over(http.get((role, hi)), alone.get((role, hi)))
        out["engine_over_static"][role] = over(alone.get((role, hi)), static.get((role, hi)))
    out["failed_requests"] = sum(r["failed"] for r in report["rows"])
    return out


def ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1e3:.0f}"


def x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def serve_markdown(report: dict[str, Any]) -> str:
    rat = report.get("ratios") or ratios(report)
    lo, hi = rat["levels"]
    lines = [f"## unmask bench --serve ({report['seconds_per_level']:.0f} s per level, closed-loop streaming clients, "
             f"device {report.get('device', 'cpu')})", "",
             "| Decoder | Model | Clients | Requests | Failed | Throughput (tok/s) | TTFT p50 / p99 (ms) | "
             "Latency p50 / p99 (ms) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['role']} | {r['model']} | {r['concurrency']} | {r['requests']} | {r['failed']} | "
                     f"{r['throughput_tokens_per_s']:.0f} | {ms(r['ttft_p50_s'])} / {ms(r['ttft_p99_s'])} | "
                     f"{ms(r['latency_p50_s'])} / {ms(r['latency_p99_s'])} |")
    lines += ["", f"- failed requests: {rat['failed_requests']}"]
    if report.get("engine_only"):
        lines += ["", "The same prompts and options straight into the engine, no HTTP (completion tokens/s): C in "
                      "flight (continuous batching, as `unmask eval --batch-size C`), and static batches of C "
                      "(`unmask.generate` on C prompts at a time, each batch waiting for its slowest row):", "",
                  "| Decoder | Model | C | Requests | In flight (tok/s) | Static batch (tok/s) |",
                  "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {r['role']} | {r['model']} | {r['concurrency']} | {r['requests']} | "
                  f"{r['throughput_tokens_per_s']:.0f} | {r['static_tokens_per_s']:.0f} |" for r in report["engine_only"]]
    lines += ["", f"| Decoder | HTTP {hi} over {lo} clients | engine {hi} over {lo} in flight | HTTP {hi} over engine "
                  f"{hi} | engine {hi} in flight over static {hi} | " + " | ".join(f"over AR at {c}" for c in
                                                                                    report["concurrency"]) + " |",
              "|---|" + "---:|" * (4 + len(report["concurrency"]))]
    for role in rat["http_gain"]:
        lines.append(f"| {role} | {x(rat['http_gain'][role])} | {x(rat['engine_gain'][role])} | "
                     f"{x(rat['http_over_engine'][role])} | {x(rat['engine_over_static'][role])} | "
                     + " | ".join(x(rat["over_ar"][role][str(c)]) for c in report["concurrency"]) + " |")
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
            ax.plot([r["concurrency"] for r in rows], [r[key] or 0 for r in rows],
                    "s--" if role == AR_ROLE else "o-", label=role)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out_dir / "serve.png")
