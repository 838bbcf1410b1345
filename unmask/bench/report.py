"""Turn one `unmask bench` run into bench.json, bench.md and bench.png.

Nothing here measures: every number is read from the dict `harness.run_bench` built, so
the three files always agree with each other and with the JSON printed by `--json`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unmask.bench.gen_length import gen_length_markdown

Report = dict[str, Any]


def longest_bucket(setting: dict[str, Any]) -> dict[str, Any]:
    # Ratios are taken at the longest outputs: that is where diffusion's parallel commits
    # should pay off most and where AR pays for the most sequential steps.
    return max(setting["buckets"], key=lambda b: b["list_length"])


def summarise(settings: list[dict[str, Any]]) -> dict[str, Any]:
    """Ratios from this run only, at the longest answers: each diffusion setting against vanilla and AR,
    the fastest setting that keeps vanilla's accuracy (within one point), and early commit's saving."""
    by_key = {s["key"]: s for s in settings}
    ar, vanilla = by_key.get("ar"), by_key.get("vanilla")
    base_ar = longest_bucket(ar)["tokens_per_second"] if ar else None
    base_vanilla = longest_bucket(vanilla)["tokens_per_second"] if vanilla else None

    def ratio(x: float, base: float | None) -> float | None:
        return x / base if base else None

    rows = []
    for s in settings:
        if s["model"] in ("ar", "isd"):  # the baseline itself, and ISD's own line below
            continue
        b = longest_bucket(s)
        tps = b["tokens_per_second"]
        rows.append({"key": s["key"], "label": s["label"], "model": s["model"], "accuracy": s["accuracy"],
                     "tokens_per_second": tps, "latency_s_mean": b["latency_s_mean"], "nfe_mean": b["nfe_mean"],
                     "vs_vanilla": ratio(tps, base_vanilla), "vs_ar": ratio(tps, base_ar)})
    # The fast-decoding bar is about sort-mdm without retraining: other models do not compete here.
    keeps = [r for r in rows if r["model"] == "diffusion" and r["key"] != "vanilla" and vanilla
             and r["accuracy"] >= vanilla["accuracy"] - 0.01 - 1e-9]
    best = max(keeps, key=lambda r: r["tokens_per_second"], default=None)
    keeps_ar = [r for r in rows if r["model"] == "diffusion" and ar and r["accuracy"] >= ar["accuracy"] - 0.01 - 1e-9]
    best_ar = max(keeps_ar, key=lambda r: r["tokens_per_second"], default=None)
    early = []
    for key, plain in (("vanilla+ec", "vanilla"), ("threshold+dual+ec", "threshold+dual"),
                       ("vanilla+ec-cal", "vanilla"), ("threshold+dual+ec-cal", "threshold+dual"),
                       ("vanilla+ec-min-cal", "vanilla"), ("threshold+dual+ec-min-cal", "threshold+dual")):
        if key in by_key and plain in by_key:
            # per request as decoded alone: in a batch, a row that committed early still rides along
            # in the passes its unfinished neighbours need
            early.append({"with": key, "without": plain,
                          "fewer_forwards": ratio(by_key[plain]["solo_nfe_mean"], by_key[key]["solo_nfe_mean"]),
                          "fewer_batch_forwards": ratio(by_key[plain]["nfe_mean"], by_key[key]["nfe_mean"]),
                          "accuracy_change": by_key[key]["accuracy"] - by_key[plain]["accuracy"]})
    isd = None
    if "isd" in by_key and "isd-ar" in by_key:
        fast, plain = longest_bucket(by_key["isd"]), longest_bucket(by_key["isd-ar"])
        isd = {"fewer_forwards_than_its_ar_greedy": ratio(plain["nfe_mean"], fast["nfe_mean"]),
               "vs_ar_twin": ratio(fast["tokens_per_second"], base_ar), "accuracy": by_key["isd"]["accuracy"],
               "identical_to_ar_greedy": by_key["isd"].get("identical_to_ar_greedy")}
    # SDTT: the student at half the teacher's steps per block, against the teacher.
    sdtt = [{"student": student, "teacher": teacher, "student_accuracy": by_key[student]["accuracy"],
             "teacher_accuracy": by_key[teacher]["accuracy"],
             "change": by_key[student]["accuracy"] - by_key[teacher]["accuracy"]}
            for student, teacher in (("sdtt-k8", "teacher-k16"), ("sdtt-k4", "teacher-k8"))
            if student in by_key and teacher in by_key]
    return {"at_list_length": longest_bucket(settings[0])["list_length"] if settings else None, "isd": isd,
            "sdtt": sdtt,
            "ar_tokens_per_second": base_ar, "ar_accuracy": ar["accuracy"] if ar else None,
            "vanilla_tokens_per_second": base_vanilla, "vanilla_accuracy": vanilla["accuracy"] if vanilla else None,
            "best_keeping_accuracy": best, "best_keeping_ar_accuracy": best_ar, "early_commit": early, "ratios": rows}


def bucket_headers(report: Report) -> list[str]:
    # Every setting times the same examples, so the first setting's answer lengths name the buckets.
    first = report["settings"][0]["buckets"]
    return [f"{b['list_length']} numbers (~{b['answer_tokens_mean']:.0f} tok)" for b in first]


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def environment_line(report: Report) -> str:
    env, proto = report["environment"], report["protocol"]
    return (f"torch {env['torch']}, {env['threads']} threads, processor {env['processor'] or '?'} "
            f"({env['cpu_count']} CPUs), OMP_WAIT_POLICY={env['OMP_WAIT_POLICY'] or 'unset'}, "
            f"load average at start {', '.join(f'{x:.2f}' for x in env['load_average_at_start'] or [])}; "
            f"accuracy on {proto['eval_limit']} held-out examples (batch {proto['eval_batch_size']}); latency at "
            f"batch 1, {proto['examples_per_bucket']} examples per bucket, {proto['warmup_calls_per_setting']} "
            f"warm-up call per setting, {proto.get('order', 'settings timed in turn')}, "
            f"max_new_tokens {proto['max_new_tokens']}.")


def markdown(report: Report) -> str:
    """One row per setting: accuracy, NFE, tokens/forward, then latency and tokens/s per output-length bucket."""
    heads = bucket_headers(report)
    lines = [f"## unmask bench: {report['task']['name']} ({'quick' if report['quick'] else 'full'})", "",
             "| Setting | Accuracy | NFE mean (batch 32) | NFE alone | Tokens/forward (batch 32) | "
             + " | ".join(heads) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(heads)]
    for s in report["settings"]:
        cells = [f"{b['latency_s_mean'] * 1e3:.1f} ms, {b['tokens_per_second']:.0f} tok/s" for b in s["buckets"]]
        solo = f"{s['solo_nfe_mean']:.1f}" if "solo_nfe_mean" in s else "n/a"
        lines.append(f"| {s['label']} | {s['accuracy']:.3f} | {s['nfe_mean']:.1f} | {solo} | "
                     f"{s['tokens_per_forward']:.2f} | "
                     + " | ".join(cells) + " |")
    summ = report["summary"]
    lines += ["", f"Batch-1 tokens/s at the longest outputs ({summ['at_list_length']} numbers), this run only:", ""]
    ar_acc = "n/a" if summ["ar_accuracy"] is None else f"{summ['ar_accuracy']:.3f}"
    for r in summ["ratios"]:
        lines.append(f"- {r['label']}: {r['tokens_per_second']:.0f} tok/s = {fmt_ratio(r['vs_vanilla'])} vanilla, "
                     f"{fmt_ratio(r['vs_ar'])} AR (accuracy {r['accuracy']:.3f} vs AR {ar_acc})")
    best = summ.get("best_keeping_accuracy")
    if best:
        lines += ["", f"Fastest setting within one point of vanilla's accuracy: **{best['label']}**, "
                      f"{fmt_ratio(best['vs_vanilla'])} vanilla and {fmt_ratio(best['vs_ar'])} AR "
                      f"(accuracy {best['accuracy']:.3f}; vanilla {summ['vanilla_accuracy']:.3f}, AR {ar_acc})."]
    if "best_keeping_ar_accuracy" in summ:
        best_ar = summ["best_keeping_ar_accuracy"]
        lines += ["", f"Fastest sort-mdm setting within one point of AR's accuracy ({ar_acc}): " + (
            f"**{best_ar['label']}**, {fmt_ratio(best_ar['vs_ar'])} AR (accuracy {best_ar['accuracy']:.3f})."
            if best_ar else "none.")]
    for e in summ.get("early_commit", []):
        lines.append(f"Early commit ({e['with']}) on {e['without']}: {fmt_ratio(e['fewer_forwards'])} fewer forwards "
                     f"per request decoded alone ({fmt_ratio(e.get('fewer_batch_forwards'))} in batches of 32), "
                     f"accuracy change {e['accuracy_change'] * 100:+.1f} points.")
    for d in summ.get("sdtt", []):
        lines.append(f"SDTT: {d['student']} {d['student_accuracy']:.3f} against the teacher's {d['teacher']} "
                     f"{d['teacher_accuracy']:.3f} ({d['change'] * 100:+.1f} points) with half the steps per block.")
    if summ.get("isd"):
        i = summ["isd"]
        lines.append(f"ISD (sort-isd): {fmt_ratio(i['fewer_forwards_than_its_ar_greedy'])} fewer forwards than the same "
                     f"model's AR greedy (batch 1), {fmt_ratio(i['vs_ar_twin'])} the AR twin's tokens/s, outputs "
                     f"identical to its AR greedy on {i['identical_to_ar_greedy']} examples, accuracy {i['accuracy']:.3f}.")
    if report.get("gen_lengths"):
        lines += ["", *gen_length_markdown(report["gen_lengths"])]
    if report.get("text"):
        lines += ["", *text_markdown(report["text"])]
    lines += ["", f"Models: {', '.join(f'{k}={v}' for k, v in report['models'].items())}.",
              "Environment: " + environment_line(report), ""]
    return "\n".join(lines)


def text_markdown(text: dict[str, Any]) -> list[str]:
    heads = [f"{n} new tokens" for n in text["gen_lengths"]]
    lines = [f"### Text: batch-1 speed on Shakespeare ({text['prompts']} held-out prompts of {text['prompt_chars']} "
             f"chars; NLL = {text['judge']}'s nats/char on the sample; distinct = distinct chars per sample)", "",
             "| Setting | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for s in text["settings"]:
        cells = []
        for c in s["lengths"]:
            nll = "n/a" if c["judge_nll"] is None else f"{c['judge_nll']:.2f}"
            cells.append(f"{c['tokens_per_second']:.0f} tok/s, NFE {c['nfe_mean']:.0f}, NLL {nll}, "
                         f"distinct {c['distinct_chars_mean']:.0f}")
        lines.append(f"| {s['label']} | " + " | ".join(cells) + " |")
    return lines


def plot(report: Report, path: Path) -> None:
    """Latency (ms) against mean output length (tokens), one line per setting, accuracy in the label."""
    # Figure + FigureCanvasAgg rather than pyplot: no global backend switch, no GUI, safe inside other programs.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    text = report.get("text")
    fig = Figure(figsize=(14 if text else 8, 6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2 if text else 1, 1)
    for s in report["settings"]:
        xs = [b["output_tokens_mean"] for b in s["buckets"]]
        ys = [b["latency_s_mean"] * 1e3 for b in s["buckets"]]
        style = "s--" if s["model"] == "ar" else "o-"
        ax.plot(xs, ys, style, label=f"{s['label']} (acc {s['accuracy']:.1%})")
    ax.set_xlabel("output length (tokens, incl. EOS; mean per bucket)")
    ax.set_ylabel("latency per request (ms, batch 1)")
    ax.set_title(f"unmask bench: {report['task']['name']}, latency against output length")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if text:
        tx = fig.add_subplot(1, 2, 2)
        for s in text["settings"]:
            tx.plot([c["new_tokens"] for c in s["lengths"]], [c["latency_s_mean"] * 1e3 for c in s["lengths"]],
                    "s--" if s["model"] == "ar" else "o-", label=s["label"])
        tx.set_xlabel("new tokens requested")
        tx.set_ylabel("latency per request (ms, batch 1)")
        tx.set_title("Shakespeare: latency against output length")
        tx.set_ylim(bottom=0)
        tx.grid(alpha=0.3)
        tx.legend(fontsize=7)
    env = report["environment"]
    fig.text(0.01, 0.005, f"torch {env['torch']}, {env['threads']} threads, "
             f"OMP_WAIT_POLICY={env['OMP_WAIT_POLICY'] or 'unset'}", fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)


def write_report(report: Report, out_dir: Path) -> None:
    """bench.json (everything), bench.md (the table and ratios), bench.png (the latency plot)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2))
    (out_dir / "bench.md").write_text(markdown(report))
    plot(report, out_dir / "bench.png")
