"""The serving report: ratios and the engine-alone table come from the rows given (no measuring here)."""
from __future__ import annotations

import pytest

from unmask.bench.engine_only import params_for
from unmask.bench.serving import DECODERS
from unmask.bench.serving_report import ratios, serve_markdown


def served(role: str, c: int, tps: float) -> dict:
    return {"role": role, "model": f"m-{role}", "concurrency": c, "requests": 10, "failed": 0,
            "throughput_tokens_per_s": tps, "ttft_p50_s": 0.01, "ttft_p99_s": 0.02, "latency_p50_s": 0.03,
            "latency_p99_s": 0.04, "server_threads": 1}


def alone(role: str, c: int, tps: float, static: float) -> dict:
    return {"role": role, "model": f"m-{role}", "concurrency": c, "requests": 8, "throughput_tokens_per_s": tps,
            "static_tokens_per_s": static}


def test_ratios_and_tables_come_from_the_rows():
    report = {"seconds_per_level": 5, "concurrency": [1, 32],
              "rows": [served("isd", 1, 1000), served("isd", 32, 1500), served("d2f", 1, 500),
                       served("d2f", 32, 2000), served("ar", 1, 250), served("ar", 32, 1000)],
              "engine_only": [alone("isd", 1, 1100, 1000), alone("isd", 32, 2000, 1600)]}
    r = ratios(report)
    assert r["http_gain"] == pytest.approx({"isd": 1.5, "d2f": 4.0, "ar": 4.0})
    assert r["over_ar"]["isd"] == pytest.approx({"1": 4.0, "32": 1.5})
    assert r["http_over_engine"]["isd"] == pytest.approx(0.75) and r["http_over_engine"]["d2f"] is None
    assert r["engine_over_static"]["isd"] == pytest.approx(1.25)
    md = serve_markdown(report)
    assert "| isd | 1.50x | 1.82x | 0.75x | 1.25x | 4.00x | 1.50x |" in md
    assert "| d2f | 4.00x | n/a | n/a | n/a | 2.00x | 2.00x |" in md
    assert "Server CPU threads: m-isd 1, m-d2f 1, m-ar 1" in md


def test_engine_params_match_what_the_server_builds_from_the_same_body():
    extra = DECODERS["mdm threshold+delayed"][1]
    assert params_for(extra, 48).options == {**extra, "max_new_tokens": 48}
    body = {"strategy": "d2f", "threshold": 0.8, "add": 0.2, "activate": 0.9, "cache": "exact", "max_tokens": 20}
    assert params_for(body, 48).options == {"strategy": "d2f", "threshold": 0.8, "add": 0.2, "activate": 0.9,
                                            "cache": "exact", "max_new_tokens": 20}


def test_every_decoder_is_benchmarked():
    strategies = {extra.get("strategy") for _, extra in DECODERS.values()}
    assert {"threshold", "factor", "low_confidence", "verifier", "isd"} <= strategies
    models = {m for m, _ in DECODERS.values()}
    assert {"sort-mdm", "sort-d2f", "sort-ar", "sort-isd"} <= models
