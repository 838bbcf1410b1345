"""Early-commit calibration reads training examples only and stops at the first scale that keeps accuracy."""
from __future__ import annotations

import pytest

from unmask.bench.calibrate import calibrate_early_commit, candidates
from unmask.evaluation import task_of


@pytest.mark.parametrize("pool", ["mean", "min"])
def test_calibration_picks_the_first_candidate_within_tolerance(mdm_model, pool):
    task = task_of(mdm_model)
    info = calibrate_early_commit(mdm_model, task, {"strategy": "low_confidence", "block_size": 8}, pools=(pool,),
                                  n=16, tolerance=0.0)[pool]
    tried = info["tried"]
    assert [t["label"] for t in tried] == [label for label, _ in candidates(pool)][:len(tried)]
    assert info["pool"] == pool
    assert all(t["accuracy"] < info["plain_accuracy"] for t in tried[:-1])  # every earlier scale lost accuracy
    if info["gaps"] is not None:
        assert tried[-1]["accuracy"] >= info["plain_accuracy"] and info["gaps"] == tried[-1]["gaps"]
    held_out = {e.prompt for e in task.test_examples}
    assert not held_out & {e.prompt for e in task.train_examples("calibrate-early-commit", 16)}
