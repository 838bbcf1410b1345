"""lm-evaluation-harness adapter: `lm_eval --model unmask` (lm.py) and unmask's own tasks (tasks/).

Importing this package needs neither lm-eval nor torch; `unmask.harness.lm` needs both.
"""
from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"  # what `unmask lm-eval-tasks` prints for --include_path
