"""Named recipes: each reproduces one bundled checkpoint (`unmask train --recipe NAME`)."""
from __future__ import annotations

import dataclasses

from unmask.config import ModelConfig, TrainConfig
from unmask.rl.iteration import RL_OBJECTIVES

# One shape for both sort models so the AR twin is the honest same-size baseline.
SORT_MODEL = ModelConfig(vocab_size=0, dim=128, n_layers=4, n_heads=4, max_seq_len=256)
SORT_OPTIONS = {"max_len": 12, "max_window": 48}  # the CPU-sized task: see README "Bundled models"
TEXT_MODEL = ModelConfig(vocab_size=0, dim=128, n_layers=4, n_heads=4, max_seq_len=512)
# The continuous twin: the same width, depth and heads; its noise conditioning (adaLN-single, time MLP,
# self-conditioning input) costs ~142k parameters, paid back by a narrower feed-forward (256, not 352), so
# it has as many parameters as the text models within 1%.
TEXT_FLOW_MODEL = dataclasses.replace(TEXT_MODEL, kind="continuous", ffn_hidden=256)

# The RL recipes' shared settings: 128 prompts x 8 answers per step, sampled at temperature 1 by the fast decoder;
# updates on the groups whose rewards differ (the others carry no gradient); one on-policy update per step.
# The one-step estimate leaves the prompt clean (p_mask_prompt 0), so tokens every answer of a group shares,
# scored in one context, cancel exactly and the gradient is what tells the answers apart (README "RL").
FAST_ROLLOUT = {"strategy": "threshold", "threshold": 0.5, "cache": "dual", "block_size": 48}  # the bench's row
SORT_RL = TrainConfig(
    name="sort-mdm-rl-direct", task="sort", objective="diffu-grpo",
    model=dataclasses.replace(SORT_MODEL, kind="diffusion"),
    init="sort-mdm", steps=100, batch_size=1024, group=8, drop_uniform_groups=True, lr=5e-5, min_lr_ratio=1.0,
    warmup_steps=10, weight_decay=0.0, eval_every=20, save_every=20, eval_examples=200, inner_steps=1,
    clip_eps=0.2, p_mask_prompt=0.0, rollout={**FAST_ROLLOUT, "temperature": 1.0},
    rewards={"exact": 1.0, "partial": 0.5}, task_options={**SORT_OPTIONS, "fill_window": 192})

# The fast decoders commit most of an answer in the first pass, where the whole answer is masked: the LLaDA
# objective's t ~ U(0, 1) spends a tenth of its draws there; t ~ U(0.9, 1) spends them all (README "RL
# post-training").
SORT_FAST = TrainConfig(
    name="sort-mdm-fast", task="sort", objective="mdm", model=dataclasses.replace(SORT_MODEL, kind="diffusion"),
    init="sort-mdm", steps=1500, batch_size=64, lr=3e-4, warmup_steps=50, eval_every=250, save_every=100,
    mask_eps=0.9, task_options={**SORT_OPTIONS, "fill_window": 192},
    description="sort-mdm fine-tuned at mask rates in [0.9, 1] (nearly the whole answer masked, as the "
                "first pass of a fast decoder sees it)")


# RL on the prompts the start gets wrong: 1024 candidates a step decoded once greedily at the rollout point, 64
# rolled out (8 answers each), wrong ones first. The starts are the bundled first-pass stages.
def screened_rl(name: str, start: str, objective: str = "diffu-grpo", steps: int = 300) -> TrainConfig:
    """Screened RL with `objective` from the model `start` (a bundled name or a folder)."""
    return dataclasses.replace(
        SORT_RL, name=name, init=start, objective=objective, steps=steps, batch_size=512,
        screen_prompts=1024, eval_every=50, save_every=25,
        description=f"{start} after {objective} RL on the prompts it gets wrong, at threshold 0.5 + dual cache")


def fast_stage(name: str, start: str) -> TrainConfig:
    """Another sort-mdm-fast stage from `start` (a bundled name or a folder)."""
    return dataclasses.replace(
        SORT_FAST, name=name, init=start,
        description=f"{start} fine-tuned for another 1500 steps at mask rates in [0.9, 1]")


def flow_recipe(name: str, width: int | None) -> TrainConfig:
    """The text flow's recipe diffusing in `width` dimensions (None: the network's own width)."""
    return TrainConfig(
        name=name, task="shakespeare", objective="flow", model=dataclasses.replace(TEXT_FLOW_MODEL, embed_dim=width),
        steps=2800, batch_size=32, seq_len=256, lr=2e-3, warmup_steps=200, eval_every=500, save_every=250,
        description=f"continuous (embedding-space, LangFlow-style) diffusion character model of Shakespeare's "
                    f"works, diffusing in {width or TEXT_FLOW_MODEL.dim} dimensions")


FLOW_W8 = flow_recipe("shakespeare-flow-w8", 8)


def prefix_variant(name: str, share: float) -> TrainConfig:
    """The 8-dimensional flow with `share` of its rows (not half) keeping a clean prefix."""
    return dataclasses.replace(FLOW_W8, name=name, flow_prefix_share=share,
                               description=FLOW_W8.description + f"; {share:.0%} of the rows trained with a clean "
                                                                 f"prompt")


RECIPES: dict[str, TrainConfig] = {
    "sort-mdm-w48": TrainConfig(
        name="sort-mdm-w48", task="sort", objective="mdm", model=dataclasses.replace(SORT_MODEL, kind="diffusion"),
        steps=10000, batch_size=64, lr=2e-3, warmup_steps=200, eval_every=500, save_every=250,
        task_options=SORT_OPTIONS,
        description="masked-diffusion sorter (LLaDA objective), answers EOS-filled to a random window of up to "
                    "48 tokens; the first stage of sort-mdm and the teacher of the distilled students"),
    # The second stage: windows up to 192 (the longest the context leaves after a prompt), so a request for
    # a long output, as LLaDA's vanilla decoding over the whole window is run, is still answered.
    "sort-mdm": TrainConfig(
        name="sort-mdm", task="sort", objective="mdm", model=dataclasses.replace(SORT_MODEL, kind="diffusion"),
        init="sort-mdm-w48", steps=1200, batch_size=64, lr=5e-4, warmup_steps=50, eval_every=200, save_every=200,
        task_options={**SORT_OPTIONS, "fill_window": 192},
        description="masked-diffusion sorter (LLaDA objective): sort-mdm-w48 fine-tuned on answers EOS-filled "
                    "to a random window of up to 192 tokens"),
    "sort-mdm-fast": SORT_FAST,
    # Three more stages of the same, each from the last (README "RL post-training": 93.7%, 96.6% and 97.0% at
    # threshold 0.5 + dual); the fourth is sort-mdm-rl's start.
    "sort-mdm-fast2": fast_stage("sort-mdm-fast2", "sort-mdm-fast"),
    "sort-mdm-fast3": fast_stage("sort-mdm-fast3", "sort-mdm-fast2"),
    "sort-mdm-fast4": fast_stage("sort-mdm-fast4", "sort-mdm-fast3"),
    "sort-ar": TrainConfig(
        name="sort-ar", task="sort", objective="ar", model=dataclasses.replace(SORT_MODEL, kind="ar"),
        steps=3000, batch_size=64, lr=2e-3, warmup_steps=200, eval_every=500, save_every=250,
        task_options=SORT_OPTIONS,
        description="autoregressive twin of sort-mdm: same shape, same data"),
    "sort-ar-small": TrainConfig(
        name="sort-ar-small", task="sort", objective="ar",
        model=ModelConfig(vocab_size=0, dim=64, n_layers=2, n_heads=2, max_seq_len=256, kind="ar"),
        steps=3000, batch_size=64, lr=3e-3, warmup_steps=200, eval_every=500, save_every=250,
        task_options=SORT_OPTIONS,
        description="small AR verifier for sort-mdm (strategy 'verifier'): same tokenizer and data, ~1/8 the size"),
    "sort-isd": TrainConfig(
        name="sort-isd", task="sort", objective="isd", model=dataclasses.replace(SORT_MODEL, kind="ar", ahead=4),
        steps=3000, batch_size=64, lr=2e-3, warmup_steps=200, eval_every=500, save_every=250,
        task_options=SORT_OPTIONS,
        description="causal sorter that also proposes 4 tokens ahead from [MASK] slots (strategy 'isd'); "
                    "same shape as sort-ar"),
    "sort-bd": TrainConfig(
        name="sort-bd", task="sort", objective="bd",
        model=dataclasses.replace(SORT_MODEL, kind="block-diffusion", block_size=4),
        steps=2000, batch_size=64, lr=2e-3, warmup_steps=200, eval_every=500, save_every=250,
        task_options=SORT_OPTIONS,
        description="block-diffusion sorter (BD3-LM objective, blocks of 4, clipped mask rates 0.3-0.8); "
                    "decode with the exact cache"),
    # The curriculum comparison: the sort-mdm-w48 recipe cut to 1500 steps, with mask rates easy to hard over
    # the first half; its baseline is `unmask train --recipe sort-mdm-w48 --max-steps 1500` (README, "Few-step training").
    "sort-mdm-curriculum": TrainConfig(
        name="sort-mdm-curriculum", task="sort", objective="mdm", model=dataclasses.replace(SORT_MODEL, kind="diffusion"),
        steps=1500, curriculum_steps=750, curriculum_start=0.2, batch_size=64, lr=2e-3, warmup_steps=200,
        eval_every=250, save_every=250, task_options=SORT_OPTIONS,
        description="sort-mdm-w48's recipe for 1500 steps with a mask-rate curriculum: the largest rate grows "
                    "from 0.2 to 1 over the first 750 steps"),
    "sort-d2f-kl": TrainConfig(
        name="sort-d2f-kl", task="sort", objective="d2f", teacher="sort-mdm-w48",
        model=dataclasses.replace(SORT_MODEL, kind="block-diffusion", block_size=16),
        steps=10000, batch_size=64, lr=1e-3, warmup_steps=100, eval_every=250, save_every=250,
        task_options=SORT_OPTIONS,
        description="D2F student of sort-mdm-w48, the published objective: block-causal (blocks of 16), distilled "
                    "from the bidirectional teacher on monotone per-block mask ratios (KL alone); the first "
                    "stage of sort-d2f"),
    # The second stage: sort-d2f-kl fine-tuned with a data term, which pulls it off the teacher where the
    # teacher is wrong (README, "D2F": better than the data term from scratch on validation).
    "sort-d2f": TrainConfig(
        name="sort-d2f", task="sort", objective="d2f", teacher="sort-mdm-w48", init="sort-d2f-kl",
        model=dataclasses.replace(SORT_MODEL, kind="block-diffusion", block_size=16),
        steps=1500, batch_size=64, lr=3e-4, warmup_steps=50, eval_every=250, save_every=250, ce_weight=1.0,
        task_options=SORT_OPTIONS,
        description="D2F student of sort-mdm-w48: sort-d2f-kl (block-causal, blocks of 16, distilled from the "
                    "bidirectional teacher) fine-tuned on the same monotone mask ratios with KL plus "
                    "cross-entropy to the true tokens; decode with strategy 'd2f'"),
    "sort-mdm-sdtt": TrainConfig(
        name="sort-mdm-sdtt", task="sort", objective="sdtt", teacher="sort-mdm-w48",
        model=dataclasses.replace(SORT_MODEL, kind="diffusion"),
        steps=1600, rounds=2, step_tokens=1, distill_block=16, batch_size=64, lr=3e-4, warmup_steps=100,
        eval_every=200, save_every=200, ce_weight=1.0, task_options=SORT_OPTIONS,
        description="sort-mdm-w48 after two rounds of self-distillation through time (blocks of 16: the teacher's "
                    "1-token steps learnt as 2-token steps, then 2 as 4): the same answers in half the steps"),
    "shakespeare-mdm": TrainConfig(
        name="shakespeare-mdm", task="shakespeare", objective="mdm", model=dataclasses.replace(TEXT_MODEL, kind="diffusion"),
        steps=3600, batch_size=32, seq_len=256, lr=2e-3, warmup_steps=200, eval_every=500, save_every=250,
        description="masked-diffusion character model of Shakespeare's works"),
    "shakespeare-ar": TrainConfig(
        name="shakespeare-ar", task="shakespeare", objective="ar", model=dataclasses.replace(TEXT_MODEL, kind="ar"),
        steps=3600, batch_size=32, seq_len=256, lr=2e-3, warmup_steps=200, eval_every=500, save_every=250,
        description="autoregressive twin of shakespeare-mdm"),
    # The diffusion space is 8-dimensional (`embed_dim`), projected to the network's 128: the bound's Gaussian
    # terms count every diffusion dimension. At equal training, on the 64 validation windows: 2.297 nats/char
    # (128 dims), 1.991 (16), 1.900 (8), 1.901 (4), 1.905 (2); 8 was kept, the lowest (README "Continuous
    # diffusion"). The -w2, -w4, -w8, -w16 and -wide recipes reproduce the comparison (half the rows with a
    # clean prefix).
    **{name: flow_recipe(name, width) for name, width in (
        ("shakespeare-flow-w8", 8), ("shakespeare-flow-w16", 16), ("shakespeare-flow-wide", None),
        ("shakespeare-flow-w4", 4), ("shakespeare-flow-w2", 2))},
    # Then the rows, against -w8 at the same steps, on the same validation windows: a fifth of them at noise
    # levels uniform over [g_min, g_max] (-uniform: 1.931, worse), fewer with a clean prefix (a prompt, which
    # the bound never scores): a fifth 1.892 (bundled, the lowest), a tenth 1.901, a twentieth 1.900: more
    # likely the spread between runs than a trend.
    "shakespeare-flow": prefix_variant("shakespeare-flow", 0.2),
    "shakespeare-flow-prefix10": prefix_variant("shakespeare-flow-prefix10", 0.1),
    "shakespeare-flow-prefix5": prefix_variant("shakespeare-flow-prefix5", 0.05),
    "shakespeare-flow-uniform": dataclasses.replace(
        FLOW_W8, name="shakespeare-flow-uniform", flow_uniform_share=0.2,
        description=FLOW_W8.description + "; a fifth of the rows trained at noise levels uniform over the range"),
    # ICE (in-place reasoning): sums of 2-4 numbers, with the chain of running sums and without.
    # The adder the ICE rows use: its AR twin adapted into masked diffusion (Dream, DiffuLLaMA): arith-ar's
    # weights, attention made bidirectional, the next-token head kept (`logits_shift`: column i - 1 scores
    # token i). Trained from scratch instead (arith-mdm-scratch) it never learnt the units digit.
    "arith-mdm": TrainConfig(
        name="arith-mdm", task="arith", objective="mdm",
        model=dataclasses.replace(SORT_MODEL, kind="diffusion", logits_shift=True, default_template=True),
        init="arith-ar", steps=6000, batch_size=64, lr=5e-4, warmup_steps=100, eval_every=1000, save_every=250,
        description="masked-diffusion adder adapted from its AR twin arith-ar (bidirectional attention, "
                    "shifted logits), trained on prompt, fixed-width chain of running sums and answer (the "
                    "answer at a fixed place: in-place reasoning and answer-first exit)"),
    # From scratch, two stages (README "In-place reasoning": 8.1% held out; the units digit at chance).
    "arith-mdm-scratch-s1": TrainConfig(
        name="arith-mdm-scratch-s1", task="arith", objective="mdm",
        model=dataclasses.replace(SORT_MODEL, kind="diffusion"),
        steps=5000, batch_size=64, lr=2e-3, warmup_steps=200, eval_every=500, save_every=250,
        description="masked-diffusion adder from scratch, first stage: prompt, fixed-width chain of running "
                    "sums and answer"),
    "arith-mdm-scratch": TrainConfig(
        name="arith-mdm-scratch", task="arith", objective="mdm",
        model=dataclasses.replace(SORT_MODEL, kind="diffusion"),
        init="runs/arith-mdm-scratch-s1", steps=10000, batch_size=64, lr=1e-3, warmup_steps=100,
        eval_every=1000, save_every=250,
        description="masked-diffusion adder from scratch: arith-mdm-scratch-s1 trained 10000 steps more"),
    "arith-ar": TrainConfig(
        name="arith-ar", task="arith", objective="ar", model=dataclasses.replace(SORT_MODEL, kind="ar"),
        steps=3000, batch_size=64, lr=2e-3, warmup_steps=200, eval_every=500, save_every=250,
        description="autoregressive twin of arith-mdm: same shape, the same chains (without the padding)"),
    # The contrast made the same way as arith-mdm: an AR model of prompt -> answer, adapted into diffusion.
    "arith-ar-direct": TrainConfig(
        name="arith-ar-direct", task="arith", objective="ar", model=dataclasses.replace(SORT_MODEL, kind="ar"),
        steps=3000, batch_size=64, lr=2e-3, warmup_steps=200, eval_every=500, save_every=250,
        task_options={"reasoning": False},
        description="AR adder trained on prompt and answer only (no reasoning)"),
    "arith-mdm-direct-from-ar": TrainConfig(
        name="arith-mdm-direct-from-ar", task="arith", objective="mdm",
        model=dataclasses.replace(SORT_MODEL, kind="diffusion", logits_shift=True),
        init="runs/arith-ar-direct", steps=3000, batch_size=64, lr=5e-4, warmup_steps=100, eval_every=500,
        save_every=250, task_options={"reasoning": False},
        description="masked-diffusion adder adapted from arith-ar-direct, prompt and answer only (no reasoning)"),
    "arith-mdm-direct": TrainConfig(
        name="arith-mdm-direct", task="arith", objective="mdm", model=dataclasses.replace(SORT_MODEL, kind="diffusion"),
        steps=15000, batch_size=64, lr=2e-3, warmup_steps=200, eval_every=500, save_every=250,
        task_options={"reasoning": False},
        description="masked-diffusion adder trained on prompt and answer only (no reasoning): the contrast"),
    # RL at a fast operating point (unmask/rl/): sort-mdm's answers at threshold 0.5 + dual, made accurate.
    # The three objectives side by side for the same rollouts, then diffu-grpo trained longer (the bundled RL
    # model until 2026-12-08; README "RL post-training").
    **{f"sort-mdm-rl-{objective}": dataclasses.replace(SORT_RL, name=f"sort-mdm-rl-{objective}", objective=objective,
                                                       description=f"sort-mdm after {objective} RL at threshold "
                                                                   "0.5 + dual cache")
       for objective in RL_OBJECTIVES},
    "sort-mdm-rl-direct": dataclasses.replace(SORT_RL, steps=800, eval_every=100, save_every=25,
                                              description="sort-mdm after diffu-grpo RL at threshold 0.5 + dual cache"),
    # The same RL from sort-mdm-fast, 300 steps (README "RL post-training": 92.7% at threshold 0.5 + dual).
    "sort-mdm-fast-rl": dataclasses.replace(SORT_RL, name="sort-mdm-fast-rl", init="sort-mdm-fast", steps=300,
                                            eval_every=50, save_every=25,
                                            description="sort-mdm-fast after diffu-grpo RL at threshold 0.5 + "
                                                        "dual cache"),
    # RL on the prompts the start gets wrong (README "RL post-training").
    # The three objectives on the same screened rollouts, 300 steps each (153,600 rollouts).
    **{f"sort-mdm-fast3-rl-screened-{objective}": screened_rl(f"sort-mdm-fast3-rl-screened-{objective}",
                                                              "sort-mdm-fast3", objective)
       for objective in RL_OBJECTIVES},
    # The three from sort-mdm-fast4, 600 steps each (307,200 rollouts; the length fixed before the runs).
    **{f"sort-mdm-fast4-rl-screened-{objective}": screened_rl(f"sort-mdm-fast4-rl-screened-{objective}",
                                                              "sort-mdm-fast4", objective, steps=600)
       for objective in RL_OBJECTIVES},
    # The bundled RL model: the most accurate of those three at threshold 0.5 + dual (README "RL post-training":
    # diffu-grpo 98.0%, trace-grpo 97.9%, wd1 97.8% on the 1000 held-out lists).
    "sort-mdm-rl": screened_rl("sort-mdm-rl", "sort-mdm-fast4", "diffu-grpo", steps=600),
    # The same from sort-mdm-fast2 (README "RL post-training": the earlier screened run).
    "sort-mdm-fast2-rl-screened": screened_rl("sort-mdm-fast2-rl-screened", "sort-mdm-fast2", steps=200),
    # Seconds-long recipes for tests and smoke runs.
    "tiny-sort-mdm": TrainConfig(
        name="tiny-sort-mdm", task="sort", objective="mdm",
        model=ModelConfig(vocab_size=0, dim=32, n_layers=2, n_heads=2, max_seq_len=256, kind="diffusion"),
        steps=20, batch_size=8, warmup_steps=2, eval_every=10, eval_batches=1, save_every=10,
        task_options={"max_len": 6, "max_window": 24}, description="test-sized sorter"),
    "tiny-arith-mdm": TrainConfig(
        name="tiny-arith-mdm", task="arith", objective="mdm",
        model=ModelConfig(vocab_size=0, dim=32, n_layers=2, n_heads=2, max_seq_len=128, kind="diffusion"),
        steps=20, batch_size=8, warmup_steps=2, eval_every=10, eval_batches=1, save_every=10,
        description="test-sized in-place adder"),
    "tiny-sort-mdm-rl": dataclasses.replace(
        SORT_RL, name="tiny-sort-mdm-rl", init="tiny-sort-mdm", steps=4, batch_size=8, group=4, eval_every=2,
        save_every=2, eval_examples=8, warmup_steps=1, lr=1e-3, inner_steps=2, p_mask_prompt=0.15,
        model=ModelConfig(vocab_size=0, dim=32, n_layers=2, n_heads=2, max_seq_len=256, kind="diffusion"),
        task_options={"max_len": 6, "max_window": 24}, description="test-sized RL sorter"),
    "tiny-shakespeare-flow": TrainConfig(
        name="tiny-shakespeare-flow", task="shakespeare", objective="flow",
        model=ModelConfig(vocab_size=0, dim=32, n_layers=2, n_heads=2, max_seq_len=256, kind="continuous"),
        steps=20, batch_size=8, seq_len=32, warmup_steps=2, eval_every=10, eval_batches=1, save_every=10,
        description="test-sized continuous text model"),
    "tiny-sort-ar": TrainConfig(
        name="tiny-sort-ar", task="sort", objective="ar",
        model=ModelConfig(vocab_size=0, dim=32, n_layers=2, n_heads=2, max_seq_len=256, kind="ar"),
        steps=20, batch_size=8, warmup_steps=2, eval_every=10, eval_batches=1, save_every=10,
        task_options={"max_len": 6, "max_window": 24}, description="test-sized AR sorter"),
}


def get_recipe(name: str) -> TrainConfig:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return dataclasses.replace(RECIPES[name])
