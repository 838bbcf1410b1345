"""Dream (`model_type: Dream`): the Qwen2 layout (q/k/v biases); its logits score the next position."""
from __future__ import annotations

from unmask.config import ModelConfig
from unmask.models.hf.names import rename

_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn.wq",
          "self_attn.k_proj": "attn.wk", "self_attn.v_proj": "attn.wv", "self_attn.o_proj": "attn.wo",
          "mlp.gate_proj": "ffn.gate", "mlp.up_proj": "ffn.up", "mlp.down_proj": "ffn.down"}
_TOP = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight", "lm_head.weight": "head.weight"}


def model_config(raw: dict) -> ModelConfig:
    return ModelConfig(
        vocab_size=raw["vocab_size"], dim=raw["hidden_size"], n_layers=raw["num_hidden_layers"],
        n_heads=raw["num_attention_heads"], n_kv_heads=raw.get("num_key_value_heads") or raw["num_attention_heads"],
        ffn_hidden=raw["intermediate_size"], max_seq_len=raw.get("max_position_embeddings", 4096),
        rope_theta=raw.get("rope_theta", 10000.0), norm_eps=raw.get("rms_norm_eps", 1e-6), qkv_bias=True,
        tie_embeddings=bool(raw.get("tie_word_embeddings")), kind="diffusion", logits_shift=True,
        mask_token_id=raw.get("mask_token_id"), eos_token_id=raw.get("eos_token_id"), pad_token_id=raw.get("pad_token_id"))


def our_name(name: str) -> str:
    return rename(name, _TOP, r"model\.layers\.(\d+)\.([\w.]+)\.(weight|bias)", _LAYER)
