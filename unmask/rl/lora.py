"""LoRA adapters (peft) for RL on models too large to update whole: `lora_rank` in a recipe.

The adapters go on every attention and feed-forward projection; only they train. The run's resumable
state keeps the adapted model as it is; the model folder it saves is the base with each adapter merged in
(W + B A * alpha / r), a plain checkpoint every command loads.
"""
from __future__ import annotations

import torch

from unmask.models.transformer import Transformer

TARGETS = ["wq", "wk", "wv", "wo", "gate", "up", "down"]


def add_lora(model: torch.nn.Module, rank: int) -> torch.nn.Module:
    """Put rank-`rank` adapters on the model's projections, in place; freeze everything else."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ValueError("lora_rank needs peft: pip install -e \".[rl]\"") from None
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=TARGETS, bias="none")
    model = inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


@torch.no_grad()
def merged(model: torch.nn.Module) -> Transformer:
    """A plain Transformer with the model's adapters merged into its weights (the model is not changed)."""
    from peft.tuners.lora import LoraLayer

    state = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            state[f"{name}.weight"] = module.get_base_layer().weight + module.get_delta_weight("default")
    plain = Transformer(model.config)
    plain.load_state_dict(state)
    return plain
