"""Published checkpoint folders (LLaDA, Dream, SDAR, Fast-dLLM v2, LLaDA2) mapped onto our Transformer, read
lazily from safetensors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from unmask.chat_template import load_chat_template
from unmask.config import ModelConfig
from unmask.models.checkpoints import attach
from unmask.models.dtypes import checkpoint_dtype, resolve_dtype
from unmask.models.hf import dream, fast_dllm_v2, llada, llada2, sdar
from unmask.models.transformer import Transformer
from unmask.models.weights import iter_tensors, stored_dtype
from unmask.tokenizers import HFTokenizer

Convert = Callable[[str, torch.Tensor], list[tuple[str, torch.Tensor]]]  # a file's tensor -> ours (0, 1 or more)


def renamed(our_name: Callable[[str], str | None]) -> Callable[[ModelConfig], Convert]:
    """A converter that only renames, one tensor to one."""
    return lambda _: lambda name, tensor: [] if our_name(name) is None else [(our_name(name), tensor)]


# model_type (lower case) -> (config mapper, converter for that config)
ARCHITECTURES: dict[str, tuple[Callable[[dict], ModelConfig], Callable[[ModelConfig], Convert]]] = {
    "llada": (llada.model_config, renamed(llada.our_name)),
    "dream": (dream.model_config, renamed(dream.our_name)),
    "sdar": (sdar.model_config, renamed(sdar.our_name)),
    "fast_dllm_qwen": (fast_dllm_v2.model_config, renamed(fast_dllm_v2.our_name)),
    "llada2_moe": (llada2.model_config, llada2.tensors),
}


def weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    single = folder / "model.safetensors"
    if not single.exists():
        raise FileNotFoundError(f"{folder} has neither model.safetensors nor model.safetensors.index.json")
    return [single]


def load_published(folder: Path, *, dtype: str | torch.dtype | None = None,
                   device: str | torch.device = "cpu") -> Transformer:
    """The folder's model on our Transformer, in `dtype` (None: the checkpoint's own dtype).

    Tensors are read one at a time and converted as they are read, so loading holds the converted
    model plus about one tensor of the file (never a float32 copy of a bfloat16 checkpoint first).
    """
    dtype = resolve_dtype(dtype)
    raw = json.loads((folder / "config.json").read_text())
    arch = str(raw.get("model_type", "")).lower()
    if arch not in ARCHITECTURES:
        raise ValueError(f"unsupported architecture {raw.get('model_type')!r} in {folder}/config.json; "
                         f"supported: {', '.join(ARCHITECTURES)}")
    make_config, converter = ARCHITECTURES[arch]
    cfg = make_config(raw)
    convert = converter(cfg)
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = {k: v for k, v in model.state_dict().items()}
    files = weight_files(folder)
    dtype = dtype or checkpoint_dtype(raw, stored_dtype(files[0]))
    state: dict[str, torch.Tensor] = {}
    for path in files:
        for name, stored in iter_tensors(path, dtype=dtype, device=device):
            for ours, tensor in convert(name, stored):
                if ours not in expected:
                    raise ValueError(f"tensor {name} (as {ours}) has no place in a {arch} model of this config")
                if tuple(tensor.shape) != tuple(expected[ours].shape):
                    raise ValueError(f"tensor {name} has shape {tuple(tensor.shape)}, expected "
                                     f"{tuple(expected[ours].shape)} for {ours}")
                state[ours] = tensor.contiguous()
    missing = sorted(set(expected) - set(state) - ({"head.weight"} if cfg.tie_embeddings else set()))
    if missing:
        raise ValueError(f"checkpoint {folder} lacks tensor(s) for {', '.join(missing[:5])}")
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.head.weight = model.embed.weight
    model.rope = type(model.rope).of(cfg).to(device)
    tok_path = folder / "tokenizer.json"
    ids = {"mask_token_id": cfg.mask_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}
    tokenizer = HFTokenizer(tok_path, chat_template=load_chat_template(folder), **ids) if tok_path.exists() else None
    return attach(model.eval(), tokenizer, name=str(folder), meta={"task": None, "architecture": arch})
