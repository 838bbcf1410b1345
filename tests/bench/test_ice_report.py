"""`unmask bench --ice`'s summary lines: each exit against its own decoding without the exit, and in-place
reasoning against no reasoning at no more forwards, computed from the rows (hand-made numbers here)."""
from unmask.bench.ice import MODELS, comparisons, markdown


def row(key: str, role: str, accuracy: float, forwards: float) -> dict:
    return {"key": key, "label": key, "model": MODELS[role], "accuracy": accuracy, "forwards_per_answer": forwards,
            "batch1_tokens_per_second": 100.0, "batch1_latency_ms": 10.0}


SETTINGS = [row("direct", "direct", 0.80, 7.0), row("direct-fast", "direct", 0.78, 2.0),
            row("ice+template", "mdm", 0.97, 22.0), row("ice+template+exit", "mdm", 0.965, 8.0),
            row("ice-fast+template", "mdm", 0.96, 8.0), row("ice-fast+template+exit", "mdm", 0.95, 5.0)]


def test_exits_are_set_against_their_own_decoding_and_reasoning_within_the_forwards():
    lines = comparisons(SETTINGS)
    assert "ice+template+exit: -0.5 points against ice+template, 2.75x fewer forwards (22.0 -> 8.0)" in lines
    assert "ice-fast+template+exit: -1.0 points against ice-fast+template, 1.60x fewer forwards (8.0 -> 5.0)" in lines
    # within 7 forwards only the fast exit row qualifies; within 2, none does
    assert "ice-fast+template+exit (5.0 forwards) against direct (7.0): +15.0 points" in lines
    assert "no reasoning row spends at most direct-fast's 2.0 forwards" in lines
    assert len(lines) == 4


def test_the_report_prints_the_comparisons():
    text = markdown({"quick": True, "settings": SETTINGS, "exit_choice": {}})
    assert "+15.0 points" in text and "| ice+template | arith-mdm | 0.970 | 22.0 |" in text
