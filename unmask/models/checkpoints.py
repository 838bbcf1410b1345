"""Model folders: `config.json` + `model.safetensors` + `tokenizer.json`; bundled-model registry.

A folder written by `save_model` is what `unmask.load_model` and `--model` accept, as are
published LLaDA/Dream folders (see `unmask.models.hf`).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from unmask.config import ModelConfig
from unmask.models.dtypes import DEFAULT_DTYPE, resolve_dtype
from unmask.models.flow import FlowTransformer
from unmask.models.transformer import Transformer
from unmask.models.weights import iter_tensors
from unmask.tokenizers import Tokenizer, load_tokenizer

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


class ModelNotFound(ValueError):
    pass


@dataclass
class ModelInfo:
    name: str
    kind: str
    task: str
    params: int
    path: str


def atomic_write(path: Path, write: Any) -> None:
    """Call write(tmp_path) then rename over `path`, so a crash never leaves a half-written file.

    The temporary file's name carries the writer's pid: one left by a writer that was killed (no
    `finally` runs on SIGKILL) is removed by the next write, one of a live writer is left alone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_temporaries(path: Path) -> None:
    for tmp in path.parent.glob(f".{path.name}.*"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if not pid.isdigit() or not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def new_model(cfg: ModelConfig) -> Transformer:
    """A freshly initialised model of the config's kind (a continuous one has its own inputs and head)."""
    return FlowTransformer(cfg) if cfg.kind == "continuous" else Transformer(cfg)


def save_model(model: Transformer, tokenizer: Tokenizer, folder: str | Path, meta: dict[str, Any] | None = None) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("head.weight", None)
    atomic_write(folder / WEIGHTS_FILE, lambda p: save_file(state, p))
    tokenizer.save(folder)
    config = {"format": "unmask", "model": model.config.to_dict(), **(meta or {})}
    atomic_write(folder / CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(config, indent=2)))


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A bundled model's folder, or the given folder; ModelNotFound otherwise."""
    text = str(name_or_path)
    if (BUNDLED_DIR / text / CONFIG_FILE).exists():
        return BUNDLED_DIR / text
    path = Path(text).expanduser()
    if (path / CONFIG_FILE).exists():
        return path
    known = ", ".join(m.name for m in bundled_models()) or "none"
    raise ModelNotFound(f"no model named {text!r}: not a bundled model ({known}) nor a folder with {CONFIG_FILE}")


def read_config(folder: Path) -> dict[str, Any]:
    try:
        raw = json.loads((folder / CONFIG_FILE).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{folder / CONFIG_FILE} is not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{folder / CONFIG_FILE} must hold a JSON object, not {type(raw).__name__}")
    return raw


def load_model(name_or_path: str | os.PathLike, *, dtype: str | torch.dtype | None = None,
               device: str | torch.device = "cpu") -> Transformer:
    """A model in eval mode carrying `tokenizer`, `mask_token_id`, `eos_token_id`, `pad_token_id`.

    dtype: "float32", "bfloat16", "float16" (or a torch dtype) for the weights; None loads a
    published folder in its checkpoint's dtype and one of ours in float32. Logits are float32 either way.
    """
    dtype = resolve_dtype(dtype)
    folder = resolve(name_or_path)
    raw = read_config(folder)
    if raw.get("format") != "unmask":
        from unmask.models.hf import load_published

        return load_published(folder, dtype=dtype, device=device)
    if not isinstance(raw.get("model"), dict):
        raise ValueError(f"{folder / CONFIG_FILE} has no 'model' section (the architecture save_model writes)")
    try:
        cfg = ModelConfig.from_dict(raw["model"])
        with torch.device("meta"):
            model = new_model(cfg)
    except (TypeError, ValueError, ZeroDivisionError) as err:
        raise ValueError(f"{folder / CONFIG_FILE} does not describe a model: {err}") from None
    state = dict(iter_tensors(folder / WEIGHTS_FILE, dtype=dtype or DEFAULT_DTYPE, device=device))
    try:
        model.load_state_dict(state, strict=not cfg.tie_embeddings, assign=True)
    except RuntimeError as err:  # torch lists every mismatch over many lines: name the first
        detail = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        raise ValueError(f"{folder / WEIGHTS_FILE} does not fit {folder / CONFIG_FILE}: {detail}") from None
    if cfg.tie_embeddings:
        model.head.weight = model.embed.weight
    # RoPE tables are not saved, and stay float32 whatever the weights' dtype
    model.rope = type(model.rope).of(cfg).to(device)
    return attach(model.eval(), load_tokenizer(folder), name=str(name_or_path), meta=raw)


def attach(model: Transformer, tokenizer: Tokenizer | None, *, name: str, meta: dict[str, Any]) -> Transformer:
    """Hang tokenizer and special ids on the model (one place decides them: the config)."""
    cfg = model.config
    model.tokenizer = tokenizer
    for key in ("mask_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(cfg, key)
        setattr(model, key, value if value is not None else getattr(tokenizer, key, None))
    model.name = name
    model.task = meta.get("task")
    model.meta = meta
    return model


def count_params(state_or_model: Any) -> int:
    tensors = state_or_model.values() if isinstance(state_or_model, dict) else state_or_model.parameters()
    return sum(t.numel() for t in tensors)


def bundled_models() -> list[ModelInfo]:
    out = []
    for folder in sorted(BUNDLED_DIR.glob(f"*/{CONFIG_FILE}")):
        raw = read_config(folder.parent)
        out.append(ModelInfo(folder.parent.name, raw["model"]["kind"], raw.get("task", ""),
                             int(raw.get("params", 0)), str(folder.parent)))
    return out
