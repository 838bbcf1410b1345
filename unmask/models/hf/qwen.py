"""The Qwen2 / Qwen3 layout shared by Dream, SDAR and Fast-dLLM v2: config fields and tensor names."""
from __future__ import annotations

from typing import Any

from unmask.models.hf.names import rename

LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn.wq",
         "self_attn.k_proj": "attn.wk", "self_attn.v_proj": "attn.wv", "self_attn.o_proj": "attn.wo",
         "self_attn.q_norm": "attn.q_norm", "self_attn.k_norm": "attn.k_norm",
         "mlp.gate_proj": "ffn.gate", "mlp.up_proj": "ffn.up", "mlp.down_proj": "ffn.down"}
TOP = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight", "lm_head.weight": "head.weight"}


def shape_fields(raw: dict) -> dict[str, Any]:
    """ModelConfig fields every Qwen-style config.json gives the same way."""
    refuse_unsupported(raw)
    return dict(vocab_size=raw["vocab_size"], dim=raw["hidden_size"], n_layers=raw["num_hidden_layers"],
                n_heads=raw["num_attention_heads"],
                n_kv_heads=raw.get("num_key_value_heads") or raw["num_attention_heads"],
                ffn_hidden=raw["intermediate_size"], max_seq_len=raw.get("max_position_embeddings", 4096),
                rope_theta=raw.get("rope_theta", 10000.0), norm_eps=raw.get("rms_norm_eps", 1e-6),
                head_size=raw.get("head_dim"), tie_embeddings=bool(raw.get("tie_word_embeddings")),
                mask_token_id=raw.get("mask_token_id"), eos_token_id=first(raw.get("eos_token_id")),
                pad_token_id=raw.get("pad_token_id"))


def first(ids: Any) -> Any:
    """eos_token_id may be a list (several stop ids): the first is the one generation writes."""
    return ids[0] if isinstance(ids, list) and ids else ids


def refuse_unsupported(raw: dict) -> None:
    """Settings our Transformer does not compute: refused by name rather than loaded wrong."""
    if raw.get("rope_scaling"):
        raise ValueError(f"rope_scaling {raw['rope_scaling']!r} is not supported; only plain RoPE is")
    if raw.get("use_sliding_window"):
        raise ValueError("use_sliding_window is not supported: unmask attends the whole context")
    if raw.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {raw['hidden_act']!r} is not supported; only silu (SwiGLU) is")


def our_name(name: str) -> str:
    return rename(name, TOP, r"model\.layers\.(\d+)\.([\w.]+)\.(weight|bias)", LAYER)
