"""`unmask bench --published-shapes` at a tiny fraction: the report's fields, the loader's peak memory, the files.

The shape arithmetic is checked against the reference LLaDA checkpoint that LLaDA's own code wrote.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import unmask
from unmask.bench.published_shapes import (GEN_LENGTH, LLADA_8B, SETTINGS, llada_config, llada_tensors,
                                            measure_load, param_count, scaled_shapes, write_llada_folder)
from unmask.cli import main

REFERENCE = Path(__file__).resolve().parent.parent / "data" / "reference" / "llada-tiny"
FRACTION = 0.01  # d 128, 1 layer, 1 head, ffn 384, vocab 1280: a few seconds


def test_cli_writes_an_honest_report(tmp_path: Path, capsys) -> None:
    assert main(["bench", "--published-shapes", "--fraction", str(FRACTION), "--out", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fraction"] == FRACTION
    assert report["shapes"] == {**scaled_shapes(FRACTION), "params": param_count(scaled_shapes(FRACTION))}
    assert report["full_shapes"]["d_model"] == 4096 and report["checkpoint_dtype"] == "bfloat16"
    assert report["dtype"] == "bfloat16"  # no --dtype: the checkpoint's own
    load = report["load"]
    assert load["weight_bytes_loaded"] == 2 * report["shapes"]["params"] == load["weight_bytes_on_disk"]
    assert load["peak_rss_mb_after_load"] >= load["rss_mb_before_load"] > 0
    assert load["rss_delta_mb"] > 0 and load["rss_delta_over_weights"] > 0
    assert [f["seq_len"] for f in report["forward"]] == [64, 256, 1024]
    assert all(f["ms_median"] > 0 for f in report["forward"])
    assert [g["setting"] for g in report["generate"]] == [label for label, _ in SETTINGS]
    for g in report["generate"]:
        assert g["tokens"] == GEN_LENGTH and 1 <= g["nfe"] <= GEN_LENGTH and g["tokens_per_second"] > 0
    assert {"torch", "threads", "OMP_NUM_THREADS"} <= set(report["environment"])
    assert report["notes"] and report["seconds_total"] > 0
    assert json.loads((tmp_path / "published_shapes.json").read_text())["fraction"] == FRACTION
    md = (tmp_path / "published_shapes.md").read_text()
    assert "| setting | NFE |" in md and "x the loaded weights" in md and "LLaDA-8B x 0.01" in md


def test_loading_as_float32_converts_while_reading(tmp_path: Path) -> None:
    shapes = scaled_shapes(FRACTION)
    on_disk = write_llada_folder(tmp_path, shapes)
    load = measure_load(tmp_path, torch.float32, "cpu", threads=1)
    assert load["dtype"] == "float32" and load["weight_bytes_loaded"] == 2 * on_disk
    assert load["peak_was_reset"] and load["rss_delta_mb"] > 0


def test_full_fraction_is_llada_8b() -> None:
    assert {k: v for k, v in scaled_shapes(1.0).items() if k in LLADA_8B} == LLADA_8B
    assert 7.9e9 < param_count(LLADA_8B) < 8.1e9  # "8B"


def test_writer_matches_llada_own_layout() -> None:
    """Same tensor names and shapes as the checkpoint LLaDA's save_pretrained wrote, and our loader's count."""
    raw = json.loads(REFERENCE.joinpath("config.json").read_text())
    shapes = {"d_model": raw["d_model"], "n_layers": raw["n_layers"], "n_heads": raw["n_heads"],
              "mlp_hidden_size": raw["mlp_hidden_size"], "vocab_size": raw["vocab_size"]}
    with safe_open(str(REFERENCE / "model.safetensors"), framework="pt") as f:
        theirs = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    assert dict(llada_tensors(shapes)) == theirs
    model = unmask.load_model(REFERENCE)
    assert param_count(shapes) == sum(p.numel() for p in model.parameters())
    ours = llada_config(shapes, raw["max_sequence_length"])
    assert {k: ours[k] for k in shapes} == {k: raw[k] for k in shapes}


def test_bad_options_are_user_errors(capsys) -> None:
    with pytest.raises(ValueError, match="--fraction"):
        scaled_shapes(0)
    assert main(["bench", "--fraction", "0.5"]) == 2
    assert "--published-shapes" in capsys.readouterr().err
    assert main(["bench", "--published-shapes", "--fraction", "2"]) == 2
    assert main(["bench", "--published-shapes", "--fraction", "0.01", "--dtype", "fp8"]) == 2
    assert "choose one of float32, bfloat16, float16" in capsys.readouterr().err
