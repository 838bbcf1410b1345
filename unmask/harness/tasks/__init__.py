"""lm-eval task folders: pass this folder to `lm_eval --include_path` (`unmask lm-eval-tasks` prints it)."""
