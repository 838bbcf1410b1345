"""One Transformer for every model kind: RMSNorm, RoPE, SwiGLU, grouped-query attention.

The attention kind (bidirectional, causal, block-causal) is data in the config; the
mask is built from token positions so the same code serves training, full-sequence
denoising, padded batches and every cache.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from unmask.config import ModelConfig
from unmask.models.feed_forward import FeedForward, MoEFeedForward
from unmask.models.kv_cache import KVCache
from unmask.models.paged_cache import PassView


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight


class RotaryEmbedding(nn.Module):
    """Rotate-half RoPE (the LLaMA/LLaDA/Qwen2 layout) over each head's first `rotary_dim` dimensions (all of
    them but for partial-rotary models such as LLaDA2), tables kept in float32."""

    def __init__(self, rotary_dim: int, max_seq_len: int, theta: float) -> None:
        super().__init__()
        self.rotary_dim = rotary_dim
        inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))
        freqs = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)  # (max_seq_len, rotary_dim)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    @classmethod
    def of(cls, cfg: ModelConfig) -> "RotaryEmbedding":
        return cls(cfg.rotary_dim, cfg.max_seq_len, cfg.rope_theta)

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin at `positions` `# (B, L)`, each `# (B, 1, L, D)`: gathered once per forward, used by every layer."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)

    def forward(self, x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x `# (B, H, L, D)` rotated by `tables` (from `tables(positions)`)."""
        cos, sin = tables
        xf = x.float()
        kept = None
        if self.rotary_dim < xf.shape[-1]:  # partial rotary: the last dimensions pass through
            xf, kept = xf[..., :self.rotary_dim], xf[..., self.rotary_dim:]
        x1, x2 = xf.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
        out = xf * cos + rotated * sin
        return (out if kept is None else torch.cat([out, kept], dim=-1)).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        # Qwen3 / SDAR / LLaDA2: each head's queries and keys RMS-normalised before RoPE
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, rot: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None, cache: KVCache | None, layer: int, start: int | torch.Tensor, extent: int
                ) -> torch.Tensor:
        B, L, _ = x.shape
        q = self.wq(x).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, L, D)
        k = self.wk(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, L, D)
        v = self.wv(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rope(q, rot), rope(k, rot)
        if cache is not None:
            k, v = cache.update(layer, start, k, v, extent)  # (B, Hkv, extent, D)
        if self.n_kv_heads != self.n_heads:
            repeat = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, L, D)
        return self.wo(out.transpose(1, 2).reshape(B, L, -1))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        moe = cfg.moe is not None and index >= cfg.moe.dense_layers
        self.ffn = MoEFeedForward(cfg.dim, cfg.moe) if moe else FeedForward(cfg.dim, cfg.ffn_hidden)

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, rot: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None, cache: KVCache | None, layer: int, start: int | torch.Tensor, extent: int
                ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope, rot, mask, cache, layer, start, extent)
        return x + self.ffn(self.ffn_norm(x))


def attention_mask(kind: str, q_pos: torch.Tensor, k_pos: torch.Tensor, k_valid: torch.Tensor | None,
                   block_size: int | None = None, q_slot: torch.Tensor | None = None,
                   k_slot: torch.Tensor | None = None) -> torch.Tensor | None:
    """Boolean mask `# (B, 1, Lq, Lk)`, True where a query may attend a key; None means 'attend all'.

    Causal and block-causal rules compare RoPE positions; padded keys are never seen, but
    every query sees its own slot so a padding row never softmaxes over nothing.
    """
    if kind == "bidirectional" and (k_valid is None or bool(k_valid.all())):
        return None
    qp, kp = q_pos[:, :, None], k_pos[:, None, :]  # (B, Lq, 1), (B, 1, Lk)
    if kind == "bidirectional":
        allowed = torch.ones(qp.shape[0], qp.shape[1], kp.shape[2], dtype=torch.bool, device=q_pos.device)
    elif kind == "causal":
        allowed = kp <= qp
    elif kind == "block-causal":
        allowed = torch.div(kp, block_size, rounding_mode="floor") <= torch.div(qp, block_size, rounding_mode="floor")
    else:
        raise ValueError(f"unknown attention kind {kind!r}")
    if k_valid is not None:
        allowed = allowed & k_valid[:, None, :]
        if q_slot is not None and k_slot is not None:
            allowed = allowed | (q_slot[None, :, None] == k_slot[None, None, :])
        else:
            allowed = allowed | torch.eye(qp.shape[1], kp.shape[2], dtype=torch.bool, device=q_pos.device)
    return allowed[:, None]


class Transformer(nn.Module):
    """Token ids in, logits out. `forward(input_ids)` alone gives full attention of the model's kind."""

    block_class: type[Block] = Block

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(self.block_class(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.rope = RotaryEmbedding.of(cfg)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("wo.weight") or name.endswith("down.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, *,
                valid: torch.Tensor | None = None, cache: KVCache | None = None, start: int | torch.Tensor = 0,
                attn_mask: torch.Tensor | None = None, kv: PassView | None = None) -> torch.Tensor:
        """Logits `# (B, L, V)` for `input_ids` `# (B, L)`.

        positions: RoPE positions `# (B, L)`; default start..start+L-1.
        valid: False for padding tokens `# (B, L)`; they are never attended to.
        cache: a KVCache; the tokens are written to slots [start, start+L) and attend to
            every filled slot under the model's attention rule. start may instead be a LongTensor
            `# (L,)` naming each token's slot (scattered writes); positions are then required.
        attn_mask: an explicit boolean mask `# (B, 1, L, Lk)` that replaces the rule (training tricks).
        kv: the engine's paged storage for this pass (unmask/models/paged_cache.py): each query's keys and
            values go to its request's slot and it attends the keys `attn_mask` (required) allows.
        """
        if kv is not None:
            return self.forward_paged(input_ids, positions, kv, attn_mask)
        B, L = input_ids.shape
        cfg = self.config
        scattered = isinstance(start, torch.Tensor)
        if positions is None:
            if scattered:
                raise ValueError("tokens written to scattered cache slots need explicit positions")
            positions = torch.arange(start, start + L, device=input_ids.device).expand(B, L)
        if int(positions.max()) >= cfg.max_seq_len:
            raise ValueError(f"position {int(positions.max())} is beyond this model's context of {cfg.max_seq_len}")
        extent = int(start.max()) + 1 if scattered else start + L
        k_pos, k_valid, q_slot, k_slot = positions, valid, None, None
        if cache is not None:
            if valid is None:
                valid = torch.ones(B, L, dtype=torch.bool, device=input_ids.device)
            extent = cache.write_meta(start, positions, valid)
            k_pos, k_valid = cache.positions[:, :extent], cache.valid[:, :extent]
            q_slot = start if scattered else torch.arange(start, start + L, device=input_ids.device)
            k_slot = torch.arange(extent, device=input_ids.device)
        mask = attn_mask
        if mask is None:
            mask = attention_mask(cfg.attention, positions, k_pos, k_valid, cfg.block_size, q_slot, k_slot)
        x = self.embed(input_ids)
        rot = self.rope.tables(positions)
        for i, layer in enumerate(self.layers):
            x = layer(x, self.rope, rot, mask, cache, i, start, extent)
        if cache is not None:
            cache.length = extent
        return self.head(self.norm(x)).float()

    def forward_paged(self, input_ids: torch.Tensor, positions: torch.Tensor, kv: PassView,
                      attn_mask: torch.Tensor | None) -> torch.Tensor:
        """A pass over several requests' queries `# (B, Lq)` at RoPE `positions`, through their KV slots."""
        if int(positions.max()) >= self.config.max_seq_len:
            raise ValueError(f"position {int(positions.max())} is beyond this model's context of "
                             f"{self.config.max_seq_len}")
        x = self.embed(input_ids)
        rot = self.rope.tables(positions)
        for i, layer in enumerate(self.layers):
            x = layer(x, self.rope, rot, attn_mask, kv, i, 0, 0)
        return self.head(self.norm(x)).float()
