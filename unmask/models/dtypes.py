"""Weight dtypes by name: what `--dtype` accepts, and which one a checkpoint is loaded in by default.

A published folder loads in its own dtype (config `torch_dtype`, else the stored tensors'),
so an 8B bfloat16 checkpoint never becomes a 32 GB float32 model by accident; our own
folders load in float32. Either way an explicit dtype wins.
"""
from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_DTYPE = torch.float32


def resolve_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """A torch dtype from a name ('bfloat16') or a dtype; None stays None (the checkpoint decides)."""
    if value is None or (isinstance(value, torch.dtype) and value in DTYPES.values()):
        return value
    if isinstance(value, str) and value in DTYPES:
        return DTYPES[value]
    raise ValueError(f"unknown dtype {value!r}; choose one of {', '.join(DTYPES)}")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def checkpoint_dtype(raw_config: dict, stored: torch.dtype | None) -> torch.dtype:
    """The dtype a published checkpoint was released in: config `torch_dtype`, else its tensors', else float32."""
    named = raw_config.get("torch_dtype")
    if isinstance(named, str) and named in DTYPES:
        return DTYPES[named]
    if stored in DTYPES.values():
        return stored
    return DEFAULT_DTYPE
