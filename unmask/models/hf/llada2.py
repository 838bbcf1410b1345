"""LLaDA2.0 (`model_type: llada2_moe`, BailingMoeV2, inclusionAI): fused query_key_value, per-head q/k
RMSNorm, partial RoPE, dense first layers then mixture-of-experts layers (sigmoid router with expert
bias, grouped top-k, shared experts). Block diffusion with no logit shift; like SDAR its attention block
is the decoding block (its generate() defaults to 32)."""
from __future__ import annotations

import re

import torch

from unmask.config import ModelConfig, MoEConfig
from unmask.models.hf.qwen import first, refuse_unsupported

DEFAULT_BLOCK = 32
_ATTN = {"dense": "attn.wo", "query_layernorm": "attn.q_norm", "key_layernorm": "attn.k_norm"}
_PROJ = {"gate_proj": "gate", "up_proj": "up", "down_proj": "down"}
_TOP = {"model.word_embeddings.weight": "embed.weight", "model.norm.weight": "norm.weight",
        "lm_head.weight": "head.weight"}


def model_config(raw: dict) -> ModelConfig:
    refuse_unsupported(raw)
    # (norm_head is a config field only: the family's modeling code never reads it, so neither do we)
    for flag in ("use_bias", "use_qkv_bias"):
        if raw.get(flag):
            raise ValueError(f"{flag} true is not supported for llada2_moe (the released models have it false)")
    if raw.get("score_function", "sigmoid") != "sigmoid":
        raise ValueError(f"score_function {raw['score_function']!r} is not supported; only sigmoid routing is")
    heads = raw["num_attention_heads"]
    moe = None
    if raw.get("num_experts"):
        moe = MoEConfig(n_experts=raw["num_experts"], per_token=raw["num_experts_per_tok"],
                        expert_hidden=raw["moe_intermediate_size"], n_shared=raw.get("num_shared_experts") or 0,
                        n_groups=raw.get("n_group") or 1, topk_groups=raw.get("topk_group") or 1,
                        routed_scaling=float(raw.get("routed_scaling_factor", 1.0)),
                        normalize=bool(raw.get("norm_topk_prob", True)),
                        dense_layers=raw.get("first_k_dense_replace", 0))
    return ModelConfig(
        vocab_size=raw["vocab_size"], dim=raw["hidden_size"], n_layers=raw["num_hidden_layers"], n_heads=heads,
        n_kv_heads=raw.get("num_key_value_heads") or heads, ffn_hidden=raw["intermediate_size"],
        max_seq_len=raw.get("max_position_embeddings", 4096), rope_theta=raw.get("rope_theta", 10000.0),
        norm_eps=raw.get("rms_norm_eps", 1e-6), head_size=raw.get("head_dim"),
        qk_norm=bool(raw.get("use_qk_norm", True)), rope_fraction=float(raw.get("partial_rotary_factor", 1.0)),
        moe=moe, tie_embeddings=bool(raw.get("tie_word_embeddings")), kind="block-diffusion",
        block_size=DEFAULT_BLOCK, flexible_blocks=True, native_decoder="llada2", mask_token_id=raw.get("mask_token_id"),
        eos_token_id=first(raw.get("eos_token_id")), pad_token_id=raw.get("pad_token_id"))


def tensors(cfg: ModelConfig):
    """The converter for this config: (name, tensor) -> [(our name, tensor)], splitting the fused qkv."""
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim

    def convert(name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        if name in _TOP:
            return [(_TOP[name], tensor)]
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias|expert_bias)", name)
        if not m:
            return [(name, tensor)]  # reported as misplaced by the loader
        layer, module, kind = f"layers.{m.group(1)}", m.group(2), m.group(3)
        if module == "attention.query_key_value":
            wq, wk, wv = tensor.split([q, kv, kv], dim=0)
            return [(f"{layer}.attn.{n}.{kind}", t) for n, t in (("wq", wq), ("wk", wk), ("wv", wv))]
        part = module.split(".")
        if part[0] == "attention" and part[1] in _ATTN:
            return [(f"{layer}.{_ATTN[part[1]]}.{kind}", tensor)]
        if module in ("input_layernorm", "post_attention_layernorm"):
            return [(f"{layer}.{'attn_norm' if module == 'input_layernorm' else 'ffn_norm'}.{kind}", tensor)]
        if module == "mlp.gate":  # the router: its weight and its load-balancing bias
            return [(f"{layer}.ffn.{'router.weight' if kind == 'weight' else 'expert_bias'}", tensor)]
        if part[0] == "mlp" and part[-1] in _PROJ:
            middle = "" if len(part) == 2 else "shared." if part[1] == "shared_experts" else f"experts.{part[2]}."
            return [(f"{layer}.ffn.{middle}{_PROJ[part[-1]]}.{kind}", tensor)]
        return [(name, tensor)]
    return convert
