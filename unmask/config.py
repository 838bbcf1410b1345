"""Typed configuration shared by models, training and decoding."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

AttentionKind = Literal["bidirectional", "causal", "block-causal"]
ModelKind = Literal["diffusion", "ar", "block-diffusion", "continuous"]

ATTENTION_OF_KIND: dict[str, str] = {
    "diffusion": "bidirectional",
    "ar": "causal",
    "block-diffusion": "block-causal",
    "continuous": "bidirectional",  # embedding-space (flow) diffusion: unmask/models/flow.py
}


@dataclass
class MoEConfig:
    """A mixture-of-experts feed-forward (LLaDA2 / BailingMoeV2, DeepSeek-V3 routing): `n_experts` SwiGLU
    experts of `expert_hidden`, `per_token` chosen per token by a sigmoid router plus a learned bias, among
    the `topk_groups` best of `n_groups` expert groups; `n_shared` always-on experts; the first
    `dense_layers` layers keep a dense feed-forward."""

    n_experts: int
    per_token: int
    expert_hidden: int
    n_shared: int = 0
    n_groups: int = 1
    topk_groups: int = 1
    routed_scaling: float = 1.0
    normalize: bool = True  # the chosen experts' weights sum to 1 (before routed_scaling)
    dense_layers: int = 0

    def __post_init__(self) -> None:
        if self.n_experts % self.n_groups or not 0 < self.topk_groups <= self.n_groups:
            raise ValueError("n_experts must divide into n_groups, and 0 < topk_groups <= n_groups")
        if not 0 < self.per_token <= self.n_experts:
            raise ValueError("per_token must lie in 1..n_experts")


@dataclass
class ModelConfig:
    """Shape of one Transformer plus the special token ids it was trained with."""

    vocab_size: int
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: same as n_heads (no grouping)
    ffn_hidden: int | None = None  # None: the SwiGLU default, ~8/3 * dim rounded to 32
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qkv_bias: bool = False
    tie_embeddings: bool = False
    kind: ModelKind = "diffusion"
    block_size: int | None = None  # only for block-diffusion
    logits_shift: bool = False  # Dream: position i scores token i+1
    head_size: int | None = None  # None: dim / n_heads (Qwen3-style checkpoints set their own)
    qk_norm: bool = False  # RMSNorm over each head's queries and keys before RoPE (Qwen3, SDAR, LLaDA2)
    rope_fraction: float = 1.0  # share of each head's dimensions RoPE rotates (LLaDA2: 0.5), the first ones
    moe: MoEConfig | None = None
    # Published block-diffusion families (SDAR, LLaDA2) decode with any block length, and attend block-
    # causally with that length: the request's block_size is the attention's too, blocks from position 0.
    flexible_blocks: bool = False
    native_decoder: str | None = None  # the strategy a published family decodes with by default (sdar, llada2, ...)
    # ICE: the default decoding writes the task's template into the canvas when the prompt fits it (README
    # "In-place reasoning": for arith-mdm the benchmark backs it). Naming a strategy opts out, as of all defaults.
    default_template: bool = False
    # continuous (flow) models: the range of the log noise-to-signal ratio g their noise path spans
    g_min: float = -10.0
    g_max: float = 10.0
    # continuous models: the diffusion space's dimensions (the embedding table's width), projected to dim at the
    # input; None: dim (shakespeare-flow diffuses in 8: README "Continuous diffusion" compares 2, 4, 8, 16 and 128).
    embed_dim: int | None = None
    ahead: int = 0  # causal models trained for introspective strided decoding: [MASK] slots proposing ahead
    mask_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.ffn_hidden is None:
            self.ffn_hidden = 32 * ((8 * self.dim // 3 + 31) // 32)
        if self.kind not in ATTENTION_OF_KIND:
            raise ValueError(f"unknown model kind {self.kind!r}; expected one of {sorted(ATTENTION_OF_KIND)}")
        if (self.head_size is None and self.dim % self.n_heads) or self.n_heads % self.n_kv_heads:
            raise ValueError("dim must divide by n_heads (unless head_size is given) and n_heads by n_kv_heads")
        if isinstance(self.moe, dict):  # read back from config.json
            self.moe = MoEConfig(**self.moe)
        if not 0 < self.rope_fraction <= 1 or int(self.head_dim * self.rope_fraction) % 2:
            raise ValueError("rope_fraction must lie in (0, 1] and rotate an even number of dimensions")
        if self.kind == "continuous" and not self.g_min < self.g_max:
            raise ValueError(f"a continuous model's noise range needs g_min < g_max, not {self.g_min} and {self.g_max}")
        if self.embed_dim is not None and (self.kind != "continuous" or self.embed_dim < 1):
            raise ValueError(f"embed_dim (the diffusion space's width) is a positive size for continuous models only, "
                             f"not {self.embed_dim} on a {self.kind} model")
        if self.kind == "block-diffusion" and not self.block_size:
            raise ValueError("a block-diffusion model needs block_size")

    @property
    def attention(self) -> str:
        return ATTENTION_OF_KIND[self.kind]

    @property
    def head_dim(self) -> int:
        return self.head_size or self.dim // self.n_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rope_fraction)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainConfig:
    """Everything a training run needs; a recipe is one named instance."""

    name: str
    task: str  # "sort" or "shakespeare"
    model: ModelConfig
    objective: Literal["mdm", "ar", "isd", "bd", "d2f", "sdtt", "flow", "diffu-grpo", "wd1", "trace-grpo"] = "mdm"
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_batches: int = 4
    save_every: int = 250
    seed: int = 0
    seq_len: int = 128  # text tasks: tokens per training crop
    # MDM: t ~ U(mask_eps, 1). Above 0 so the 1 / t weight stays finite; raised (sort-mdm-fast: 0.9) it trains
    # only heavily masked inputs, and the loss is then no longer a bound on the NLL.
    mask_eps: float = 1e-3
    # Mask-rate curriculum (mdm): t's upper end grows linearly from curriculum_start to 1 over the
    # first curriculum_steps steps, easy (few masks) to hard; 0 turns it off.
    curriculum_steps: int = 0
    curriculum_start: float = 0.2
    # flow: share of text rows that keep a clean prefix (prompts), and share of rows whose noise level is drawn
    # uniformly over the whole range [g_min, g_max] instead of through the learnt schedule, which leaves the
    # low-noise end, where the likelihood bound still integrates, almost untrained (unmask/train/flow_objective.py)
    flow_prefix_share: float = 0.5
    flow_uniform_share: float = 0.0
    # Distillation (d2f, sdtt): the teacher, a bundled name or a model folder; the student starts as its copy.
    teacher: str | None = None
    rounds: int = 1  # sdtt: rounds over `steps`; each starts from the last round's student as teacher
    step_tokens: int = 2  # sdtt: tokens the teacher commits per step in the first round (then doubling)
    distill_block: int = 16  # sdtt: the block length of the block-by-block decoding it trains for
    # d2f, sdtt: weight of a data term beside the KL to the teacher, the student's cross-entropy to the true
    # tokens on the same masked positions (0: the published objectives, KL alone)
    ce_weight: float = 0.0
    # A second stage: a bundled name or a model folder whose weights the model starts from instead of a
    # fresh initialisation (d2f, sdtt: instead of the teacher's copy); its shape must be the recipe's.
    init: str | None = None
    task_options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    # RL (diffu-grpo, wd1, trace-grpo; unmask/rl/): a step is one iteration of batch_size rollouts, `group`
    # per prompt, decoded with `rollout` (unmask's decoding options: the operating point RL trains for),
    # scored by the weighted `rewards` (unmask/rl/rewards.py), then `inner_steps` updates (d1's mu).
    group: int = 4
    rollout: dict[str, Any] = field(default_factory=dict)
    rewards: dict[str, float] = field(default_factory=lambda: {"exact": 1.0})
    inner_steps: int = 1
    clip_eps: float = 0.2  # GRPO's ratio clip
    kl_beta: float = 0.0  # weight of the k3 KL to the frozen starting model (0: no reference pass)
    p_mask_prompt: float = 0.15  # diffu-grpo, wd1: prompt tokens masked in the one-step estimate
    eval_examples: int = 200  # RL: held-out answers decoded at the rollout operating point per eval
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank (peft) instead of every weight
    # Update only on groups whose rewards differ (DAPO's dynamic sampling, as a filter): a group of equal
    # rewards has zero advantages, so without KL it adds nothing to any objective's gradient but its passes.
    drop_uniform_groups: bool = False
    # Roll out the prompts the model gets wrong (a curriculum of hard prompts): draw `screen_prompts` candidates
    # per step (in all, split over processes like the rollouts), decode each once greedily at the rollout
    # point, and roll out the wrong ones first, then right ones, up to batch_size / group. 0: no screening.
    screen_prompts: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.step_tokens < 1 or self.distill_block < 1:
            raise ValueError("rounds, step_tokens and distill_block must each be at least 1")
        if self.ce_weight < 0:
            raise ValueError(f"ce_weight must not be negative, not {self.ce_weight}")
        if self.model.logits_shift and self.objective != "mdm":  # objectives.aligned_logits is the mdm loss's
            raise ValueError(f"logits_shift (an AR model adapted into diffusion) trains with objective 'mdm' only, "
                             f"not {self.objective!r}")
        if not 0 < self.mask_eps < 1:
            raise ValueError(f"mask_eps (the lowest mask rate drawn) must lie in (0, 1), not {self.mask_eps}")
        if self.curriculum_steps and self.curriculum_start <= self.mask_eps:
            raise ValueError(f"a curriculum raising the highest mask rate from {self.curriculum_start} leaves nothing "
                             f"to draw above mask_eps {self.mask_eps}: start it higher or lower mask_eps")
        if not (0 <= self.flow_prefix_share <= 1 and 0 <= self.flow_uniform_share <= 1):
            raise ValueError(f"flow_prefix_share and flow_uniform_share are shares of rows and must lie in [0, 1], "
                             f"not {self.flow_prefix_share} and {self.flow_uniform_share}")
        if not 0 < self.curriculum_start <= 1 or self.curriculum_steps < 0:
            raise ValueError("curriculum_start must lie in (0, 1] and curriculum_steps must not be negative")
        if self.group < 2 or self.inner_steps < 1 or self.lora_rank < 0:
            raise ValueError("group must be at least 2 (advantages are relative to the group), inner_steps at "
                             "least 1 and lora_rank not negative")
        if not 0 <= self.p_mask_prompt < 1 or self.clip_eps <= 0 or self.kl_beta < 0:
            raise ValueError("p_mask_prompt must lie in [0, 1), clip_eps above 0 and kl_beta not negative")
        if self.screen_prompts < 0:
            raise ValueError(f"screen_prompts (candidate prompts per step) must not be negative, not "
                             f"{self.screen_prompts}")
        if self.drop_uniform_groups and self.kl_beta:
            raise ValueError("drop_uniform_groups skips groups whose KL term kl_beta still reads: use one or the "
                             "other")
