"""SDAR / TraDo (`model_type: sdar`, JetLM): the Qwen3 layout (per-head q/k RMSNorm, explicit head_dim, no
biases), block diffusion with no logit shift. Its attention is block-causal with the decoding block
length, which the checkpoint does not fix: SDAR's evaluation uses 4, the default here; a request's
`block_size` sets both."""
from __future__ import annotations

from unmask.config import ModelConfig
from unmask.models.hf.qwen import our_name, shape_fields

__all__ = ["model_config", "our_name"]
DEFAULT_BLOCK = 4


def model_config(raw: dict) -> ModelConfig:
    if raw.get("attention_bias"):
        raise ValueError("attention_bias true is not supported for sdar (the released models have none)")
    return ModelConfig(**shape_fields(raw), qk_norm=True, kind="block-diffusion", block_size=DEFAULT_BLOCK,
                       flexible_blocks=True, native_decoder="sdar")
