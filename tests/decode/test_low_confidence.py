"""LLaDA low-confidence remasking: forward-pass budget, bit-exact agreement with LLaDA's generate(), batching."""
from __future__ import annotations

import pytest
import torch

import unmask
from conftest import MASK, left_pad, random_model, random_prompt


@torch.no_grad()
def llada_generate(model, prompt, *, steps, gen_length, block_length, mask_id=MASK):
    """LLaDA's reference generate() (temperature 0, low_confidence remasking, no CFG), in plain torch."""
    B, P = prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    num_blocks = gen_length // block_length
    steps_b = steps // num_blocks
    nfe = 0
    for nb in range(num_blocks):
        block_mask_index = x[:, P + nb * block_length:P + (nb + 1) * block_length] == mask_id
        mask_num = block_mask_index.sum(dim=1, keepdim=True)
        num_transfer = torch.zeros(B, steps_b, dtype=torch.int64) + mask_num // steps_b
        for j in range(B):
            num_transfer[j, :int(mask_num[j] % steps_b)] += 1
        for i in range(steps_b):
            mask_index = x == mask_id
            logits = model(x)
            nfe += 1
            x0 = torch.argmax(logits, dim=-1)
            p = torch.softmax(logits.to(torch.float64), dim=-1)
            x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
            x0_p[:, P + (nb + 1) * block_length:] = -float("inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, torch.tensor(-float("inf"), dtype=torch.float64))
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(B):
                _, select = torch.topk(confidence[j], k=int(num_transfer[j, i]))
                transfer[j, select] = True
            x[transfer] = x0[transfer]
    return x[:, P:], nfe


@pytest.fixture(scope="module")
def model():
    return random_model("diffusion", seed=7)


@pytest.mark.parametrize("G, B, K", [(8, 8, 8), (8, 8, 3), (12, 4, 6), (12, 4, 12), (16, 8, 4), (16, 4, 8)])
def test_matches_llada_reference_generate(model, G, B, K):
    """unmask.generate(low_confidence) returns exactly LLaDA's tokens for the same (gen, block, steps)."""
    prompt = random_prompt(5, seed=G * 100 + B * 10 + K, batch=2)
    expected, ref_nfe = llada_generate(model, prompt, steps=K, gen_length=G, block_length=B)
    out = unmask.generate(model, prompt, strategy="low_confidence", max_new_tokens=G, block_size=B, steps=K,
                          temperature=0, stop_at_eos=False)
    assert out.token_ids.tolist() == expected.tolist()
    assert not bool((out.token_ids == MASK).any())
    assert out.nfe == ref_nfe  # every step here commits at least one token


@pytest.mark.parametrize("G, B", [(8, 8), (12, 4), (10, 4)])
def test_steps_none_commits_one_token_per_forward(model, G, B):
    """Without a step budget each forward commits exactly one token: nfe == gen_length."""
    out = unmask.generate(model, random_prompt(4, seed=G), strategy="low_confidence", max_new_tokens=G,
                          block_size=B, steps=None, stop_at_eos=False)
    assert out.nfe == G
    assert out.lengths == [G]
    assert sum(out.steps_per_block) == G


@pytest.mark.parametrize("K", [1, 2, 4, 8])
def test_step_budget_is_the_number_of_forwards(model, K):
    """One block of 8 with steps=K (K <= 8, so every step commits) costs exactly K forwards."""
    out = unmask.generate(model, random_prompt(4, seed=K), strategy="low_confidence", max_new_tokens=8,
                          block_size=8, steps=K, stop_at_eos=False)
    assert out.nfe == K
    assert not bool((out.token_ids == MASK).any())


def test_forwards_never_exceed_the_requested_steps(model):
    """BUG (unmask/decode/schedule.py:33): 5 tokens in blocks of 2 with steps=4 must cost at most 4
    forwards; the proportional per-block split rounds to [2, 2, 1] and costs 5."""
    out = unmask.generate(model, random_prompt(4, seed=3), max_new_tokens=5, block_size=2, steps=4,
                          stop_at_eos=False)
    assert not bool((out.token_ids == MASK).any())
    assert out.nfe <= 4


def test_more_steps_than_tokens_skips_empty_steps(model):
    """Steps that would commit nothing are skipped, and the result equals one token per step."""
    prompt = random_prompt(4, seed=11)
    many = unmask.generate(model, prompt, max_new_tokens=4, block_size=4, steps=10, stop_at_eos=False)
    one = unmask.generate(model, prompt, strategy="low_confidence", max_new_tokens=4, block_size=4, steps=None,
                          stop_at_eos=False)
    assert many.nfe == 4
    assert many.token_ids.tolist() == one.token_ids.tolist()


@pytest.mark.parametrize("steps", [None, 6])
def test_left_padded_batch_equals_row_by_row(model, steps):
    """A batch of different-length prompts (left-padded) decodes each row exactly as it decodes alone."""
    rows = [random_prompt(n, seed=20 + n)[0] for n in (3, 7, 5)]
    ids, mask = left_pad(rows)
    kw = dict(strategy="low_confidence", max_new_tokens=12, block_size=4, steps=steps, stop_at_eos=False)
    batched = unmask.generate(model, ids, prompt_mask=mask, **kw)
    assert batched.nfe == (12 if steps is None else 6)
    for i, r in enumerate(rows):
        alone = unmask.generate(model, r[None], **kw)
        assert batched.token_ids[i].tolist() == alone.token_ids[0].tolist(), f"row {i}"


def test_random_remasking_fills_everything_and_is_seeded(model):
    """The 'random' strategy follows the same schedule, fills all masks, and is reproducible by seed."""
    prompt = random_prompt(4, seed=5, batch=2)
    kw = dict(strategy="random", max_new_tokens=8, block_size=4, steps=4, stop_at_eos=False)
    a, b = unmask.generate(model, prompt, seed=1, **kw), unmask.generate(model, prompt, seed=1, **kw)
    assert a.nfe == 4
    assert not bool((a.token_ids == MASK).any())
    assert a.token_ids.tolist() == b.token_ids.tolist()


def test_unknown_strategy_and_parameters_are_refused(model):
    """Unknown strategy names and parameters fail with the known ones listed."""
    with pytest.raises(ValueError, match="known strategies"):
        unmask.generate(model, random_prompt(3, seed=0), strategy="nope")
    with pytest.raises(ValueError, match="does not take"):
        unmask.generate(model, random_prompt(3, seed=0), strategy="low_confidence", accept=0.3)


class FavoursMask(torch.nn.Module):
    """A random diffusion model whose logits favour the [MASK] id at position 1 of the answer."""

    def __init__(self):
        super().__init__()
        self.inner = random_model("diffusion", seed=7)
        for name in ("config", "tokenizer", "mask_token_id", "eos_token_id", "pad_token_id"):
            setattr(self, name, getattr(self.inner, name))

    def forward(self, ids, positions=None, **kw):
        logits = self.inner(ids, positions, **kw)
        logits[:, 6, MASK] += 100.0  # prompt is 5 tokens: the second generated position
        return logits


@pytest.mark.parametrize("steps", [None, 4])
def test_model_proposing_the_mask_id_does_not_crash(steps):
    """BUG (unmask/decode/loop.py:46-50): when the model's argmax is the [MASK] id the loop "commits" a
    mask, the position stays masked, and `while masked.any()` runs past the strategy's schedule:
    IndexError in LowConfidence.select (low_confidence.py:19). Generation must end within its budget
    (a mask left in is shown as '_' by the tokenizer)."""
    out = unmask.generate(FavoursMask(), random_prompt(5, seed=1, batch=2), max_new_tokens=8, block_size=8,
                          steps=steps, stop_at_eos=False)
    assert out.token_ids.shape == (2, 8)
    assert out.nfe <= 8


def test_block_diffusion_model_decodes_with_low_confidence():
    """A block-causal model decodes through the same loop, filling every mask."""
    bd = random_model("block-diffusion", seed=3)
    out = unmask.generate(bd, random_prompt(4, seed=1), max_new_tokens=8, block_size=4, stop_at_eos=False,
                          strategy="low_confidence")
    assert out.token_ids.shape == (1, 8)
    assert not bool((out.token_ids == MASK).any())


def test_sampling_is_reproducible_with_a_seed(model):
    """temperature > 0 with the same seed gives the same tokens (LLaDA's Gumbel sampler)."""
    prompt = random_prompt(4, seed=2)
    kw = dict(max_new_tokens=8, block_size=4, temperature=1.0, seed=123, stop_at_eos=False)
    assert unmask.generate(model, prompt, **kw).token_ids.tolist() == unmask.generate(model, prompt, **kw).token_ids.tolist()
