"""Reading safetensors files one tensor at a time, each converted to the wanted dtype as it is read.

Through `safetensors.safe_open`: the file is memory-mapped and each tensor is copied out (and cast)
on its own, so nothing builds a second full-precision copy of the model. The mapped pages are
file-backed and reclaimable, but they do count in the process's resident size while loading.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open

FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def open_checked(path: Path):
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from None


def stored_dtype(path: Path) -> torch.dtype | None:
    """The dtype of the first floating-point tensor in the file (None if it holds none)."""
    with open_checked(path) as f:
        for name in f.keys():
            torch_dtype = FLOAT_DTYPES.get(f.get_slice(name).get_dtype())
            if torch_dtype is not None:
                return torch_dtype
    return None


def iter_tensors(path: Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of the file; floating tensors become `dtype`."""
    with open_checked(path) as f:
        for name in f.keys():
            try:
                tensor = f.get_tensor(name)
            except SafetensorError as err:
                raise ValueError(f"tensor {name} in {path} cannot be read ({err})") from None
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)  # a no-op when the dtype already matches; else one tensor's copy
            yield name, tensor.to(device)
