"""Published checkpoint folders (LLaDA, Dream) mapped onto our Transformer, read lazily from safetensors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from unmask.chat_template import load_chat_template
from unmask.config import ModelConfig
from unmask.models.checkpoints import attach
from unmask.models.dtypes import checkpoint_dtype, resolve_dtype
from unmask.models.hf import dream, llada
from unmask.models.transformer import Transformer
from unmask.models.weights import iter_tensors, stored_dtype
from unmask.tokenizers import HFTokenizer

# model_type -> (config mapper, tensor-name mapper)
ARCHITECTURES: dict[str, tuple[Callable[[dict], ModelConfig], Callable[[str], str | None]]] = {
    "llada": (llada.model_config, llada.our_name),
    "dream": (dream.model_config, dream.our_name),
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
    make_config, rename = ARCHITECTURES[arch]
    cfg = make_config(raw)
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = {k: v for k, v in model.state_dict().items()}
    files = weight_files(folder)
    dtype = dtype or checkpoint_dtype(raw, stored_dtype(files[0]))
    state: dict[str, torch.Tensor] = {}
    for path in files:
        for name, tensor in iter_tensors(path, dtype=dtype, device=device):
            ours = rename(name)
            if ours is None:
                continue
            if ours not in expected:
                raise ValueError(f"tensor {name} (as {ours}) has no place in a {arch} model of this config")
            if tuple(tensor.shape) != tuple(expected[ours].shape):
                raise ValueError(f"tensor {name} has shape {tuple(tensor.shape)}, expected {tuple(expected[ours].shape)}")
            state[ours] = tensor
    missing = sorted(set(expected) - set(state) - ({"head.weight"} if cfg.tie_embeddings else set()))
    if missing:
        raise ValueError(f"checkpoint {folder} lacks tensor(s) for {', '.join(missing[:5])}")
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.head.weight = model.embed.weight
    model.rope = type(model.rope)(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta).to(device)
    tok_path = folder / "tokenizer.json"
    ids = {"mask_token_id": cfg.mask_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}
    tokenizer = HFTokenizer(tok_path, chat_template=load_chat_template(folder), **ids) if tok_path.exists() else None
    return attach(model.eval(), tokenizer, name=str(folder), meta={"task": None, "architecture": arch})
