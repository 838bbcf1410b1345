"""Fast-dLLM v2 (`model_type: Fast_dLLM_Qwen`, NVlabs): Qwen2.5 (q/k/v biases) fine-tuned into a block-
diffusion model of block `bd_size`. Its logits are shifted as an AR model's: position i scores token
i + 1, so a block's first token is scored from the previous block's last position."""
from __future__ import annotations

from unmask.config import ModelConfig
from unmask.models.hf.qwen import our_name, shape_fields

__all__ = ["model_config", "our_name"]


def model_config(raw: dict) -> ModelConfig:
    return ModelConfig(**shape_fields(raw), qkv_bias=True, kind="block-diffusion",
                       block_size=int(raw.get("bd_size", 32)), logits_shift=True,
                       native_decoder="fast_dllm_v2")
