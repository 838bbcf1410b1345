"""The benchmark's model roles: which model each row runs on."""
from __future__ import annotations

import pytest

import unmask
from unmask.bench.harness import add_sdtt_teacher, check_same_task
from unmask.data.sort import SortTask
from unmask.evaluation import task_of


def test_sdtts_rows_compare_the_student_with_its_own_teacher():
    """The SDTT bar is student against teacher; the bundled student's teacher is sort-mdm's first stage."""
    names = {"diffusion": "sort-mdm", "sdtt": "sort-mdm-sdtt"}
    loaded = {role: unmask.load_model(name) for role, name in names.items()}
    add_sdtt_teacher(names, loaded)
    assert names["sdtt-teacher"] == loaded["sdtt"].meta["teacher"] == "sort-mdm-w48"
    assert loaded["sdtt-teacher"].meta["recipe"] == "sort-mdm-w48"


def test_a_teacher_that_is_the_diffusion_model_is_loaded_once():
    names = {"diffusion": "sort-mdm-w48", "sdtt": "sort-mdm-sdtt"}
    loaded = {role: unmask.load_model(name) for role, name in names.items()}
    add_sdtt_teacher(names, loaded)
    assert loaded["sdtt-teacher"] is loaded["diffusion"]


def test_models_trained_on_longer_windows_answer_the_same_questions():
    """sort-mdm's second stage saw windows up to 192; it is benchmarked on the AR twin's held-out split."""
    tasks = {role: task_of(unmask.load_model(name)) for role, name in (("diffusion", "sort-mdm"), ("ar", "sort-ar"))}
    assert tasks["diffusion"].fill_window == 192 and tasks["ar"].fill_window == 0
    assert check_same_task(tasks).max_window == 48
    with pytest.raises(ValueError, match="different sort options"):
        check_same_task({**tasks, "other": SortTask(max_len=6, max_window=24)})
