"""`unmask bench`: the AR twin against every diffusion decoding setting, in one process.

Sort: held-out accuracy and batch-1 latency by answer length, then by requested output length
(`bench.gen_length`: 64 to 192 tokens for answers that end at EOS). Text (Shakespeare, `bench.text`):
batch-1 speed at 64/128/256 new tokens, the samples scored by the AR twin.

Every figure comes from one run on one machine, through the calls users make
(`evaluate_sort` for accuracy, `unmask.generate` for latency), so the ratios in the
summary compare like with like even where the absolute numbers depend on the machine.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from unmask.bench.gen_length import run_gen_lengths
from unmask.bench.settings import BLOCK_SIZE, Setting, make_settings
from unmask.data.sort import Example, SortTask
from unmask.evaluation import evaluate_sort, task_of
from unmask.generation import generate
from unmask.models.checkpoints import load_model
from unmask.threads import choose_threads

DEFAULT_MODELS = {"ar": "sort-ar", "diffusion": "sort-mdm"}
OPTIONAL_MODELS = {"isd": "sort-isd", "bd": "sort-bd", "d2f": "sort-d2f", "sdtt": "sort-mdm-sdtt",
                   "rl": "sort-mdm-rl"}  # when bundled
EVAL_BATCH = 32


def list_length(ex: Example) -> int:
    return len(ex.prompt.split()) - 1  # "sort: a b c" -> 3


def length_buckets(task: SortTask, k: int) -> dict[int, list[Example]]:
    """The first `k` held-out examples of a short, a middle and the longest list length.

    Answer length in tokens grows with list length, so the buckets span the output lengths the task has.
    """
    wanted = sorted({task.min_len, (task.min_len + task.max_len) // 2, task.max_len})
    buckets: dict[int, list[Example]] = {n: [] for n in wanted}
    for ex in task.test_examples:
        n = list_length(ex)
        if n in buckets and len(buckets[n]) < k:
            buckets[n].append(ex)
    return {n: exs for n, exs in buckets.items() if exs}


def cpu_model() -> str | None:
    """The CPU's model name on Linux, where platform.processor() is often empty."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def environment() -> dict[str, Any]:
    """What the timings depend on; OMP_WAIT_POLICY matters because spin-waiting threads slow batch-1 CPU decoding."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "processor": platform.processor() or cpu_model() or "",
            "platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "load_average_at_start": list(load) if load else None}


def accuracy(model: torch.nn.Module, task: SortTask, setting: Setting, limit: int) -> dict[str, Any]:
    """Held-out exact match through `evaluate_sort`, batched as users evaluate."""
    res = evaluate_sort(model, task, limit=limit, batch_size=EVAL_BATCH, **setting.gen_kwargs())
    return {"n": res["n"], "accuracy": res["accuracy"], "nfe_mean": res["nfe_mean"],
            "solo_nfe_mean": res["solo_nfe_mean"], "_outputs": res["outputs"],
            "tokens_per_forward": res["tokens_per_forward"], "batch_tokens_per_second": res["tokens_per_second"]}


def summarise_bucket(n: int, exs: list[Example], calls: list[tuple[float, int, int, bool]],
                     tok: Any) -> dict[str, Any]:
    """Mean latency, tokens/s (total tokens over total seconds) and NFE of one setting on one bucket."""
    seconds = [c[0] for c in calls]
    tokens, total_s = sum(c[1] for c in calls), sum(seconds)
    return {"list_length": n, "n": len(exs),
            "answer_tokens_mean": sum(len(tok.encode(e.answer)) + 1 for e in exs) / len(exs),  # + EOS
            "output_tokens_mean": tokens / len(calls), "latency_s_mean": total_s / len(calls),
            "latency_s_median": statistics.median(seconds),  # robust to a descheduled call
            "tokens_per_second": tokens / total_s if total_s else 0.0,
            "nfe_mean": sum(c[2] for c in calls) / len(calls),
            "exact_match": sum(c[3] for c in calls) / len(calls), "latencies_s": seconds}


def latency(loaded: dict[str, torch.nn.Module], task: SortTask, settings: list[Setting],
            buckets: dict[int, list[Example]], progress: bool) -> dict[str, list[dict[str, Any]]]:
    """Batch-1 `generate` latency per setting and output-length bucket, after one untimed warm-up call each.

    Settings are interleaved example by example (starting setting rotated) rather than timed one after
    another: on a shared machine the background load drifts, and timing each setting in its own stretch
    of time lets that drift masquerade as a speed difference between settings.
    """
    def prompt(model: torch.nn.Module, ex: Example) -> torch.Tensor:
        return torch.tensor([task.prompt_ids(model.tokenizer, ex.prompt)], dtype=torch.long)  # (1, P)

    # Warm up on the longest bucket so every code path (all blocks, the full cache) has run once.
    longest = buckets[max(buckets)][0]
    for s in settings:
        model = loaded[s.model]
        generate(model, prompt(model, longest), max_new_tokens=task.max_window, **s.gen_kwargs())
    calls: dict[str, dict[int, list[tuple[float, int, int, bool]]]] = {s.key: {n: [] for n in buckets} for s in settings}
    jobs = [(n, ex) for n, exs in buckets.items() for ex in exs]
    for i, (n, ex) in enumerate(tqdm(jobs, desc="latency", disable=not progress, file=sys.stderr, leave=False)):
        for s in settings[i % len(settings):] + settings[:i % len(settings)]:
            model = loaded[s.model]
            ids = prompt(model, ex)
            t0 = time.perf_counter()
            out = generate(model, ids, max_new_tokens=task.max_window, **s.gen_kwargs())
            dt = time.perf_counter() - t0
            ok = task.score(model.tokenizer.decode(out.sequences[0]), ex)
            calls[s.key][n].append((dt, out.n_tokens, out.nfe, ok))
    return {s.key: [summarise_bucket(n, buckets[n], calls[s.key][n], loaded[s.model].tokenizer) for n in buckets]
            for s in settings}


def calibrated_rows(model: torch.nn.Module, task: SortTask, settings: list[Setting], quick: bool
                    ) -> dict[str, tuple[Setting | None, dict[str, Any]]]:
    """For each early-commit row, the same row with gaps calibrated on training examples (bench.calibrate),
    once for Prophet's mean gap (`KEY-cal`) and once for the every-position minimum (`KEY-min-cal`)."""
    from unmask.bench.calibrate import calibrate_early_commit

    out = {}
    for s in settings:
        if s.model == "diffusion" and s.options.get("early_commit") is True:
            base = {k: v for k, v in s.options.items() if k != "early_commit"}
            found = calibrate_early_commit(model, task, base, pools=("mean", "min"), n=100 if quick else 300)
            for pool, suffix in (("mean", "-cal"), ("min", "-min-cal")):
                info = found[pool]
                row = None
                if info["gaps"] is not None:
                    row = Setting(f"{s.key}{suffix}", f"{s.label} ({pool} gap, {info['label']}, calibrated on "
                                  "training examples)", "diffusion",
                                  {**base, "early_commit": info["gaps"], "early_commit_pool": pool})
                out[s.key + suffix] = (row, info)
    return out


def available(models: dict[str, str]) -> dict[str, str]:
    from unmask.models.checkpoints import bundled_models

    bundled = {m.name for m in bundled_models()}
    return {role: name for role, name in models.items() if name in bundled}


def add_from_meta(names: dict[str, str], loaded: dict[str, torch.nn.Module], role: str, of: str, key: str) -> None:
    """Role `role`: the model the `of` model's meta names under `key` (else the diffusion model), loaded once:
    a row compares a trained model with the very model it came from, which need not be the one benchmarked
    beside it."""
    if of not in loaded or role in loaded:
        return
    names[role] = loaded[of].meta.get(key) or names["diffusion"]
    same = next((loaded[r] for r, name in names.items() if name == names[role] and r in loaded), None)
    loaded[role] = same if same is not None else load_model(names[role], device=next(loaded[of].parameters()).device)


def add_sdtt_teacher(names: dict[str, str], loaded: dict[str, torch.nn.Module]) -> None:
    """Role "sdtt-teacher": the SDTT student's own teacher, since SDTT's bar compares the two."""
    add_from_meta(names, loaded, "sdtt-teacher", "sdtt", "teacher")


def check_same_task(tasks: dict[str, SortTask]) -> SortTask:
    """The models must share the held-out split and the requested output length (their training fill may
    differ: a model trained on longer windows answers the same questions)."""
    first = next(iter(tasks.values()))
    if not isinstance(first, SortTask):
        raise ValueError(f"the benchmark runs on the sort task, not {first.name!r}")
    for role, t in tasks.items():
        if not isinstance(t, SortTask) or not t.same_questions(first):
            raise ValueError(f"the {role} model was trained on different sort options ({t}) than {first}")
    return first


def run_bench(*, quick: bool, out_dir: Path, progress: bool = True, models: dict[str, str] | None = None,
              text_models: dict[str, str] | None = None, with_text: bool = True, device: str = "cpu"
              ) -> dict[str, Any]:
    """Measure every setting, write bench.json / bench.md / bench.png into `out_dir`, return the JSON dict.
    device: where the sort models run (the text part stays on the CPU)."""
    from unmask.bench.report import markdown, summarise, write_report
    from unmask.bench.text import run_text

    t_start = time.perf_counter()
    names = {**DEFAULT_MODELS, **available(OPTIONAL_MODELS), **(models or {})}
    loaded = {role: load_model(path, device=device) for role, path in names.items()}
    add_sdtt_teacher(names, loaded)
    add_from_meta(names, loaded, "rl-start", "rl", "init")  # the RL model beside the model its RL started from
    for m in loaded.values():  # the same thread rule as `unmask generate/eval/serve` (unmask/threads.py)
        choose_threads(m)
    env = environment()
    if progress and not env["OMP_WAIT_POLICY"]:
        # The CLI sets PASSIVE before importing torch; a library caller cannot fix it this late.
        print("unmask bench: OMP_WAIT_POLICY is unset; spin-waiting threads may inflate batch-1 timings "
              "(set OMP_WAIT_POLICY=PASSIVE before starting Python)", file=sys.stderr)
    task = check_same_task({role: task_of(m) for role, m in loaded.items()})
    # The full run scores every held-out example: on the first 500 alone one setting read 97.4% against 98.2%
    # on all 1000, a gap as large as the one-point bars it is compared with.
    limit, k = (100, 3) if quick else (len(task.test_examples), 10)
    buckets = length_buckets(task, k)
    settings = [s for s in make_settings(quick, task.max_window) if s.model in names]
    calibration = calibrated_rows(loaded["diffusion"], task, settings, quick)
    settings += [row for row, _ in calibration.values() if row is not None]

    results = []
    bar = tqdm(settings, desc="accuracy", disable=not progress, file=sys.stderr)
    for s in bar:  # accuracy first, batched; the timed batch-1 calls follow, interleaved across settings
        bar.set_postfix_str(s.label)
        results.append({**asdict(s), "model_path": names[s.model], **accuracy(loaded[s.model], task, s, limit)})
    bar.close()
    timings = latency(loaded, task, settings, buckets, progress)
    sweep = run_gen_lengths(loaded, task, settings, buckets[max(buckets)], progress=progress)
    outputs = {row["key"]: row.pop("_outputs") for row in results}
    for row in results:
        row["buckets"] = timings[row["key"]]
    if "isd" in outputs and "isd-ar" in outputs:  # lossless: ISD must reproduce its own AR greedy output
        same = sum(a == b for a, b in zip(outputs["isd"], outputs["isd-ar"]))
        next(r for r in results if r["key"] == "isd")["identical_to_ar_greedy"] = f"{same}/{len(outputs['isd'])}"

    report = {"quick": quick, "environment": env, "device": device, "models": names,
              "task": {"name": task.name, "min_len": task.min_len, "max_len": task.max_len,
                       "max_value": task.max_value, "max_window": task.max_window},
              "protocol": {"eval_limit": limit, "eval_batch_size": EVAL_BATCH, "examples_per_bucket": k,
                           "latency_batch_size": 1, "max_new_tokens": task.max_window, "block_size": BLOCK_SIZE,
                           "warmup_calls_per_setting": 1, "order": "settings interleaved per example, start rotated",
                           "timer": "time.perf_counter around unmask.generate"},
              "settings": results, "summary": summarise(results), "gen_lengths": sweep,
              "early_commit_calibration": {key: info for key, (_, info) in calibration.items()}}
    if with_text:
        plain = [s for s in settings if s.model in ("ar", "diffusion") and s.options.get("strategy") != "verifier"
                 and not s.key.endswith("-cal")]
        # sort-calibrated gaps mean nothing for text (the SDTT teacher's rows run role sdtt-teacher, not these)
        report["text"] = run_text(plain, quick=quick, progress=progress, models=text_models)
    report["wall_seconds"] = time.perf_counter() - t_start
    write_report(report, Path(out_dir))
    if progress:
        print(markdown(report), file=sys.stderr)
    return report
