"""LLaDA (`model_type: llada`): OLMo-style names, separate SwiGLU gate (`ff_proj`) and up projections."""
from __future__ import annotations

from unmask.config import ModelConfig
from unmask.models.hf.names import rename

_BLOCK = {"attn_norm": "attn_norm", "ff_norm": "ffn_norm", "q_proj": "attn.wq", "k_proj": "attn.wk",
          "v_proj": "attn.wv", "attn_out": "attn.wo", "ff_proj": "ffn.gate", "up_proj": "ffn.up", "ff_out": "ffn.down"}
_TOP = {"model.transformer.wte.weight": "embed.weight", "model.transformer.ln_f.weight": "norm.weight",
        "model.transformer.ff_out.weight": "head.weight"}


def model_config(raw: dict) -> ModelConfig:
    return ModelConfig(
        vocab_size=raw.get("embedding_size") or raw["vocab_size"], dim=raw["d_model"], n_layers=raw["n_layers"],
        n_heads=raw["n_heads"], n_kv_heads=raw.get("n_kv_heads") or raw["n_heads"], ffn_hidden=raw["mlp_hidden_size"],
        max_seq_len=raw.get("max_sequence_length", 4096), rope_theta=raw.get("rope_theta", 10000.0),
        norm_eps=raw.get("rms_norm_eps", 1e-5), qkv_bias=bool(raw.get("include_qkv_bias") or raw.get("include_bias")),
        tie_embeddings=bool(raw.get("weight_tying")), kind="diffusion", mask_token_id=raw.get("mask_token_id", 126336),
        eos_token_id=raw.get("eos_token_id"), pad_token_id=raw.get("pad_token_id"))


def our_name(name: str) -> str:
    return rename(name, _TOP, r"model\.transformer\.blocks\.(\d+)\.(\w+)\.(weight|bias)", _BLOCK)
