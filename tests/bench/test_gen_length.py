"""The output-length sweep: every chosen row at every length, the whole-window vanilla scaled to each length."""
from __future__ import annotations

from conftest import random_model
from unmask.bench.gen_length import gen_length_markdown, run_gen_lengths, sweep_settings
from unmask.bench.settings import Setting
from unmask.data.sort import SortTask


def test_each_row_runs_at_each_length_and_vanilla_covers_the_whole_window():
    loaded = {"diffusion": random_model("diffusion", seed=1), "ar": random_model("ar", seed=1)}
    task = SortTask(min_len=2, max_len=3, max_window=8)
    settings = [Setting("ar", "AR", "ar", {"strategy": "ar"}),
                Setting("vanilla", "vanilla, blocks of 4", "diffusion",
                        {"strategy": "low_confidence", "block_size": 4}),
                Setting("threshold", "not swept", "diffusion", {"strategy": "threshold"})]
    assert [s.key for s in sweep_settings(settings)] == ["ar", "vanilla", "vanilla-window"]
    sweep = run_gen_lengths(loaded, task, settings, task.test_examples[:2], lengths=(8, 16), progress=False)
    rows = {(r["key"], r["max_new_tokens"]): r for r in sweep["rows"]}
    assert set(rows) == {(k, n) for k in ("ar", "vanilla", "vanilla-window") for n in (8, 16)}
    for n in (8, 16):
        window = rows[("vanilla-window", n)]
        assert window["options"]["block_size"] == n and window["nfe_mean"] == n  # one token per step, one block
        assert rows[("vanilla", n)]["options"]["block_size"] == 4 and rows[("vanilla", n)]["nfe_mean"] <= n
        assert all(0.0 <= rows[(k, n)]["exact_match"] <= 1.0 and rows[(k, n)]["latency_s_mean"] > 0 for k in
                   ("ar", "vanilla", "vanilla-window"))
    md = "\n".join(gen_length_markdown(sweep))
    assert "| vanilla, blocks of 4 | " in md and "max_new_tokens 16" in md
    assert "Faster per request than AR (its exact match: " in md
    assert "- vanilla, blocks of 4: " in md and "x at 16" in md
