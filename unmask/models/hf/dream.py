"""Dream (`model_type: Dream`): the Qwen2 layout (q/k/v biases); its logits score the next position."""
from __future__ import annotations

from unmask.config import ModelConfig
from unmask.models.hf.qwen import our_name, shape_fields

__all__ = ["model_config", "our_name"]


def model_config(raw: dict) -> ModelConfig:
    return ModelConfig(**shape_fields(raw), qkv_bias=True, kind="diffusion", logits_shift=True)
