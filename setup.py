"""Everything else is in pyproject.toml; this file only ships `unmask-lm-eval.pth` to site-packages.

lm-evaluation-harness finds models through its own registry and has no entry-point discovery, so the
.pth imports `_unmask_lm_eval_hook`, which registers `--model unmask` (see that module). pyproject alone
cannot put a file at the root of site-packages: a wheel's root is site-packages, so build_py copies the
.pth there. An editable install (PEP 660) packs only its unpacked-wheel folder (install's install_lib)
and no build_lib, so there the .pth goes into that folder instead.
"""
from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "unmask-lm-eval.pth"  # sorts after __editable__.*.pth, whose finder must already be in place


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        folder = self.get_finalized_command("install").install_lib if self.editable_mode else self.build_lib
        self.copy_file(str(Path(__file__).parent / PTH), str(Path(folder, PTH)), preserve_mode=0)


setup(cmdclass={"build_py": BuildPyWithPth})
