"""Early-commit calibration reads training examples only and stops at the first scale that keeps accuracy."""
from __future__ import annotations

from unmask.bench.calibrate import SCALES, calibrate_early_commit
from unmask.evaluation import task_of


def test_calibration_picks_the_first_scale_within_tolerance(mdm_model):
    task = task_of(mdm_model)
    info = calibrate_early_commit(mdm_model, task, {"strategy": "low_confidence", "block_size": 8}, n=16,
                                  tolerance=0.0)
    tried = info["tried"]
    assert [t["scale"] for t in tried] == list(SCALES[:len(tried)])
    assert all(t["accuracy"] < info["plain_accuracy"] for t in tried[:-1])  # every earlier scale lost accuracy
    if info["gaps"] is not None:
        assert tried[-1]["accuracy"] >= info["plain_accuracy"] and info["gaps"] == tried[-1]["gaps"]
    held_out = {e.prompt for e in task.test_examples}
    assert not held_out & {e.prompt for e in task.train_examples("calibrate-early-commit", 16)}
