"""The continuous (embedding-space, LangFlow-style) diffusion model: our Transformer over noisy embeddings.

Input per position: a clean token's embedding (the prompt, or any known token) or a noisy one,
z = alpha(g) e + sigma(g) eps (unmask/models/noise_schedule.py), plus the self-conditioning estimate
(the previous prediction's expected embedding, softmax(logits) E). Embeddings are the rows of the token
table normalised to norm sqrt(d), so every token is equally far from the noise. Each position's own noise
level g conditions every block through an adaptive norm (scale and shift of each RMSNorm's output from
an embedding of g, zero at initialisation: the plain Transformer at first); clean positions have their
own conditioning value below the range.

Output: x-prediction logits over the vocabulary plus a skip term from z against the embedding table,
alpha / sigma^2 * (z . e_v). That term is the exact log-likelihood of z under each token, log N(z;
alpha e_v, sigma^2 I) up to a constant, since every e_v has the same norm; so the network's own logits
only have to carry what the context says (the prior), and at low noise the prediction is exact by
construction. Clean positions get no skip term (their logits are never used).

`forward(input_ids)` alone (the API every model keeps) reads [MASK] ids as pure noise at g_max with z = 0
(the noise's mean) and every other id as clean.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from unmask.config import ModelConfig
from unmask.models.noise_schedule import GumbelSchedule, alpha_sigma
from unmask.models.paged_cache import PassView
from unmask.models.transformer import Block, RotaryEmbedding, Transformer, attention_mask

TIME_FREQS = 32  # sinusoidal features of the noise level
CLEAN_LEVEL = -0.05  # the normalised noise level clean positions are conditioned on (noisy ones lie in [0, 1])


@dataclass
class FlowInputs:
    """A pass's continuous inputs, aligned with its ids."""

    z: torch.Tensor  # (B, L, w) noisy embeddings (w: the diffusion space's width); read only where g is finite
    g: torch.Tensor  # (B, L) log noise-to-signal ratio; -inf where the token is clean (its id is read)
    self_cond: torch.Tensor | None = None  # (B, L, w) the previous estimate's expected embedding; None: zeros


class FlowBlock(Block):
    """A Transformer block whose two norms are scaled and shifted by the position's noise conditioning:
    the modulation every block shares plus this block's own offset (PixArt-alpha's adaLN-single, which
    keeps the conditioning's parameters few)."""

    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__(cfg, index)
        self.modulation_offset = nn.Parameter(torch.zeros(4 * cfg.dim))

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, rot: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None, cache: PassView | None, layer: int, start: int, extent: int,
                shared: torch.Tensor | None = None) -> torch.Tensor:
        """As Block.forward; `shared` `# (B, L, 4d)` is the modulation every block shares."""
        s1, b1, s2, b2 = (shared + self.modulation_offset).chunk(4, dim=-1)  # each (B, L, d)
        x = x + self.attn(self.attn_norm(x) * (1 + s1) + b1, rope, rot, mask, cache, layer, start, extent)
        return x + self.ffn(self.ffn_norm(x) * (1 + s2) + b2)


def expected_embedding(logits: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """softmax(logits) E `# (..., d)`: the x-prediction in embedding space, for the table `# (V, d)`."""
    return torch.softmax(logits.float(), dim=-1).to(table.dtype) @ table


def time_features(u: torch.Tensor) -> torch.Tensor:
    """Sinusoidal features `# (..., 2F)` of the normalised noise level u `# (...)`."""
    freqs = torch.exp(-math.log(10000.0) * torch.arange(TIME_FREQS, device=u.device) / TIME_FREQS)
    args = (1000.0 * u.float())[..., None] * freqs
    return torch.cat([args.sin(), args.cos()], dim=-1)


class FlowTransformer(Transformer):
    block_class = FlowBlock

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        d = cfg.dim
        self.schedule = GumbelSchedule(cfg.g_min, cfg.g_max, scale=math.log(cfg.vocab_size))
        self.time_mlp = nn.Sequential(nn.Linear(2 * TIME_FREQS, d), nn.SiLU(), nn.Linear(d, d), nn.SiLU())
        width = cfg.embed_dim or d  # the diffusion space's width
        # A narrower (or wider) diffusion space has its own table, projected to the network's width at the input.
        self.in_proj: nn.Linear | None = None
        if width != d:
            self.embed = nn.Embedding(cfg.vocab_size, width)
            self.in_proj = nn.Linear(width, d, bias=False)
        self.self_cond_in = nn.Linear(width, d, bias=False)
        self.modulation = nn.Linear(d, 4 * d)  # shared by every block
        self.final_modulation = nn.Linear(d, 2 * d)
        nn.init.zeros_(self.modulation.weight)  # adaptive norms start as the identity
        nn.init.zeros_(self.modulation.bias)
        nn.init.zeros_(self.final_modulation.weight)
        nn.init.zeros_(self.final_modulation.bias)
        nn.init.normal_(self.self_cond_in.weight, std=0.02)
        if cfg.tie_embeddings:
            raise ValueError("a continuous model keeps its output head apart from its embedding table")
        # At low noise the skip term makes the softmax very sharp: its tail and the gradients through it are
        # denormal floats, which made CPU matrix products 3x slower here. Flushing them to zero changes no
        # value above 1e-38 (a process-wide CPU flag; a no-op where the hardware has no denormal mode).
        torch.set_flush_denormal(True)

    def embeddings(self) -> torch.Tensor:
        """The token embeddings `# (V, w)`, w the diffusion space's width (embed_dim, else dim), each row
        normalised to norm sqrt(w)."""
        w = self.embed.weight
        return w * (math.sqrt(w.shape[1]) / w.norm(dim=1, keepdim=True).clamp_min(1e-6))

    def expected_embedding(self, logits: torch.Tensor) -> torch.Tensor:
        """The prediction's expected embedding softmax(logits) E `# (..., d)`: the x-prediction in embedding space."""
        return expected_embedding(logits, self.embeddings())

    def from_masks(self, input_ids: torch.Tensor) -> FlowInputs:
        """[MASK] ids as pure noise's mean (z = 0 at g_max), every other id clean."""
        noisy = input_ids == self.config.mask_token_id
        g = torch.where(noisy, torch.tensor(self.config.g_max), torch.tensor(-math.inf)).to(input_ids.device)
        z = torch.zeros(*input_ids.shape, self.embed.weight.shape[1], dtype=self.embed.weight.dtype,
                        device=input_ids.device)  # (B, L, w)
        return FlowInputs(z, g)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, *,
                valid: torch.Tensor | None = None, cache: object = None, start: int | torch.Tensor = 0,
                attn_mask: torch.Tensor | None = None, kv: PassView | None = None,
                flow: FlowInputs | None = None) -> torch.Tensor:
        """Logits `# (B, L, V)`: x-prediction plus the skip term at noisy positions. `flow` gives the noisy
        inputs (default: `from_masks`); `kv` is the engine's paged storage (every column is rerun each step,
        so a continuous model reads no cached key); a `cache` is refused."""
        if cache is not None or not isinstance(start, int) or start:
            raise ValueError("a continuous (flow) model reruns every column at each step: it takes no KV cache")
        B, L = input_ids.shape
        if positions is None:
            positions = torch.arange(L, device=input_ids.device).expand(B, L)
        if int(positions.max()) >= self.config.max_seq_len:
            raise ValueError(f"position {int(positions.max())} is beyond this model's context of "
                             f"{self.config.max_seq_len}")
        if flow is None:
            flow = self.from_masks(input_ids)
        mask = attn_mask
        if mask is None and kv is None:
            mask = attention_mask("bidirectional", positions, positions, valid)
        table = self.embeddings()  # (V, d), read by the inputs and the skip term
        x, cond, clean = self.inputs(input_ids, flow, table)
        shared = self.modulation(cond)  # (B, L, 4d)
        rot = self.rope.tables(positions)
        for i, layer in enumerate(self.layers):
            x = layer(x, self.rope, rot, mask, kv, i, 0, L, shared)
        return self.output(x, cond, flow, clean, table)

    def forward_paged(self, input_ids: torch.Tensor, positions: torch.Tensor, kv: PassView,
                      attn_mask: torch.Tensor | None, flow: FlowInputs | None = None) -> torch.Tensor:
        return self.forward(input_ids, positions, kv=kv, attn_mask=attn_mask, flow=flow)

    def inputs(self, input_ids: torch.Tensor, flow: FlowInputs, table: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the first block's input `# (B, L, d)`, the noise conditioning `# (B, L, d)`, clean `# (B, L)`)."""
        cfg = self.config
        clean = ~torch.isfinite(flow.g)  # (B, L)
        known = F.embedding(input_ids, table)  # (B, L, w)
        x = torch.where(clean[..., None], known, flow.z.to(known.dtype))  # (B, L, w)
        if self.in_proj is not None:
            x = self.in_proj(x)  # (B, L, d)
        estimate = flow.self_cond.to(known.dtype) if flow.self_cond is not None else torch.zeros_like(known)
        x = x + self.self_cond_in(torch.where(clean[..., None], known, estimate))
        u = (flow.g.clamp(cfg.g_min, cfg.g_max) - cfg.g_min) / (cfg.g_max - cfg.g_min)
        u = torch.where(clean, torch.full_like(u, CLEAN_LEVEL), u)
        cond = self.time_mlp(time_features(u).to(known.dtype))
        return x, cond, clean

    def output(self, x: torch.Tensor, cond: torch.Tensor, flow: FlowInputs, clean: torch.Tensor,
               table: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        scale, shift = self.final_modulation(cond).chunk(2, dim=-1)
        logits = self.head(self.norm(x) * (1 + scale) + shift).float()  # (B, L, V)
        alpha, sigma = alpha_sigma(flow.g.float().clamp(cfg.g_min, cfg.g_max))
        skip = (alpha / sigma.pow(2))[..., None] * (flow.z.float() @ table.float().T)  # (B, L, V)
        return logits + torch.where(clean[..., None], torch.zeros_like(skip), skip)
