"""Make `lm_eval --model unmask` resolve: lm-evaluation-harness has no plugin discovery for models.

`unmask-lm-eval.pth` imports this module at every Python start, so it must stay cheap and import
neither torch nor unmask: it only puts a finder on `sys.meta_path`. When `lm_eval.models` is imported
(lm-eval's `get_model` does so while its registry is empty, and that module registers lm-eval's own models
as lazy "module:Class" strings), the finder lets it run and then registers
"unmask" -> "unmask.harness.lm:UnmaskLM" the same lazy way, so unmask and torch load only when the model
is asked for. Registering any earlier would leave the registry non-empty, `get_model` would then skip
`lm_eval.models`, and lm-eval's own models would go missing.
"""
from __future__ import annotations

import sys

WATCHED = "lm_eval.models"
NAME, TARGET = "unmask", "unmask.harness.lm:UnmaskLM"


def register() -> None:
    """Register the lazy target in lm-eval's model registry, unless some "unmask" is there already."""
    try:
        from lm_eval.api.registry import model_registry
    except ImportError:  # lm-eval before 0.4.10 has no lazy registry: unmask's `eval` extra needs a newer one
        return
    if NAME not in model_registry:
        model_registry.register(NAME, target=TARGET)


class RegisteringLoader:
    """The real loader of `lm_eval.models`, which registers unmask once the module has run."""

    def __init__(self, loader: object) -> None:
        self.loader = loader

    def create_module(self, spec: object) -> object:
        return self.loader.create_module(spec)

    def exec_module(self, module: object) -> None:
        self.loader.exec_module(module)
        register()

    def __getattr__(self, name: str) -> object:  # resource readers, get_code, ...: the real loader's
        return getattr(self.loader, name)


class AfterLmEvalModels:
    """A meta-path finder that answers only for `lm_eval.models`, with the spec the other finders give."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        if fullname != WATCHED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None  # lm-eval is not installed: nothing to do
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = RegisteringLoader(spec.loader)
        return spec


def install() -> None:
    if WATCHED in sys.modules:  # already imported (the hook was imported late): register now
        register()
    elif not any(isinstance(f, AfterLmEvalModels) for f in sys.meta_path):
        sys.meta_path.insert(0, AfterLmEvalModels())


install()
