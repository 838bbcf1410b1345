"""The benchmark summary: which ratios it reports, from which rows (no measuring here)."""
from __future__ import annotations

import pytest

from unmask.bench.report import markdown, summarise
from unmask.bench.settings import make_settings


def row(key: str, model: str, accuracy: float, tokens_per_second: float, nfe: float = 10.0) -> dict:
    buckets = [{"list_length": n, "tokens_per_second": tokens_per_second * (1 if n == 12 else 0.5),
                "latency_s_mean": 0.01, "nfe_mean": nfe, "answer_tokens_mean": 3 * n, "output_tokens_mean": 3 * n}
               for n in (2, 7, 12)]
    return {"key": key, "label": key, "model": model, "accuracy": accuracy, "nfe_mean": nfe,
            "tokens_per_forward": 1.0, "buckets": buckets}


def test_summary_ratios_at_the_longest_answers_and_the_best_sort_mdm_setting():
    settings = [row("ar", "ar", 1.0, 500), row("vanilla", "diffusion", 0.97, 100, nfe=48),
                row("threshold+dual", "diffusion", 0.965, 900), row("threshold", "diffusion", 0.90, 2000),
                row("d2f", "d2f", 0.99, 3000), row("teacher-k16", "sdtt-teacher", 0.97, 150),
                row("teacher-k8", "sdtt-teacher", 0.95, 200),
                row("sdtt-k8", "sdtt", 0.968, 200), row("sdtt-k4", "sdtt", 0.93, 400)]
    summ = summarise(settings)
    ratios = {r["key"]: r for r in summ["ratios"]}
    assert "ar" not in ratios and ratios["d2f"]["vs_ar"] == pytest.approx(6.0)
    assert ratios["threshold+dual"]["vs_vanilla"] == pytest.approx(9.0)
    # the fastest sort-mdm setting within a point of vanilla: not the inaccurate one, not another model
    assert summ["best_keeping_accuracy"]["key"] == "threshold+dual"
    assert summ["best_keeping_ar_accuracy"] is None  # nothing of sort-mdm's reaches 0.99; d2f is another model
    sdtt = {d["student"]: d for d in summ["sdtt"]}
    assert sdtt["sdtt-k8"]["teacher"] == "teacher-k16" and sdtt["sdtt-k8"]["change"] == pytest.approx(-0.002)
    assert sdtt["sdtt-k4"]["teacher"] == "teacher-k8" and sdtt["sdtt-k4"]["change"] == pytest.approx(-0.02)


def test_markdown_names_the_sdtt_comparison():
    settings = [row("ar", "ar", 1.0, 500), row("vanilla", "diffusion", 0.97, 100),
                row("teacher-k16", "sdtt-teacher", 0.97, 100), row("sdtt-k8", "sdtt", 0.968, 200)]
    report = {"quick": True, "task": {"name": "sort"}, "settings": settings, "summary": summarise(settings),
              "models": {"ar": "sort-ar"},
              "environment": {"torch": "x", "threads": 1, "processor": "", "cpu_count": 2, "OMP_WAIT_POLICY": None,
                              "load_average_at_start": None},
              "protocol": {"eval_limit": 1, "eval_batch_size": 1, "examples_per_bucket": 1,
                           "warmup_calls_per_setting": 1, "max_new_tokens": 48}}
    assert "SDTT: sdtt-k8 0.968 against the teacher's teacher-k16 0.970 (-0.2 points)" in markdown(report)


def test_step_budgets_cover_every_block_of_the_window():
    rows = {s.key: s for s in make_settings(window=48)}
    assert rows["sdtt-k8"].options == {"strategy": "low_confidence", "block_size": 16, "steps": 24}
    assert rows["sdtt-k4"].options["steps"] == 12 and rows["teacher-k8"].model == "sdtt-teacher"
    assert make_settings(window=40)[0].key == "ar" and {s.key: s for s in make_settings(window=40)}["sdtt-k4"].options["steps"] == 12


def test_the_ar_accuracy_comparison_counts_exactly_one_point():
    settings = [row("ar", "ar", 1.0, 500), row("vanilla", "diffusion", 0.99, 100, nfe=48),
                row("fast", "diffusion", 0.99, 900), row("faster", "diffusion", 0.988, 2000)]
    summ = summarise(settings)
    assert summ["best_keeping_ar_accuracy"]["key"] == "fast"
    assert summ["best_keeping_ar_accuracy"]["vs_ar"] == pytest.approx(1.8)


def test_early_commit_saving_counts_forwards_per_request_alone():
    """In a batch of 32 the passes run until the slowest row is done; the saving a request sees is its own."""
    plain = row("vanilla", "diffusion", 0.99, 100, nfe=48)
    fast = row("vanilla+ec-min-cal", "diffusion", 0.985, 150, nfe=48)
    plain["solo_nfe_mean"], fast["solo_nfe_mean"] = 48.0, 30.0
    summ = summarise([row("ar", "ar", 1.0, 500), plain, fast])
    (ec,) = summ["early_commit"]
    assert ec["with"] == "vanilla+ec-min-cal" and ec["fewer_forwards"] == pytest.approx(1.6)
    assert ec["fewer_batch_forwards"] == pytest.approx(1.0) and ec["accuracy_change"] == pytest.approx(-0.005)
