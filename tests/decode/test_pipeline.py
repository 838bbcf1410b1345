"""D2F pipelined decoding on a block-causal model: reductions, pipelining, EOS, batches."""
from __future__ import annotations

import pytest
import torch

import unmask
from conftest import EOS, MASK, left_pad, random_model, random_prompt
from unmask.decode.rows.pipeline import grid_blocks


@pytest.fixture(scope="module")
def model():
    return random_model("block-diffusion", seed=5)  # model block size 4


def test_grid_blocks_follow_the_model_grid():
    assert grid_blocks(6, 17, 4) == [(6, 8), (8, 12), (12, 16), (16, 17)]
    assert grid_blocks(8, 16, 4) == [(8, 12), (12, 16)]


@pytest.mark.parametrize("tau", [1.01, 0.3])
def test_without_pipelining_it_is_threshold_decoding_block_by_block(model, tau):
    """add >= 1: a block starts only when the previous one is finished, as the plain loop decodes."""
    prompt = random_prompt(8, seed=2, batch=1)  # prompt ends on the grid: the decode blocks coincide
    d2f = unmask.generate(model, prompt, strategy="d2f", threshold=tau, add=1.01, max_new_tokens=16,
                          stop_at_eos=False)
    plain = unmask.generate(model, prompt, strategy="threshold", threshold=tau, block_size=4, cache="exact",
                            max_new_tokens=16, stop_at_eos=False)
    assert d2f.token_ids.tolist() == plain.token_ids.tolist()
    assert d2f.nfe == plain.nfe


def test_pipelining_fills_everything_in_fewer_passes(model):
    prompt = random_prompt(6, seed=3)
    kw = dict(strategy="d2f", threshold=0.2, max_new_tokens=24, stop_at_eos=False)
    serial = unmask.generate(model, prompt, add=1.01, **kw)
    piped = unmask.generate(model, prompt, add=0.1, activate=0.5, **kw)
    assert not bool((piped.token_ids == MASK).any())
    assert piped.nfe < serial.nfe


def test_batches_equal_rows_and_eos_ends_rows(model):
    rows = [random_prompt(n, seed=n)[0] for n in (3, 9, 6)]
    ids, mask = left_pad(rows)
    kw = dict(strategy="d2f", threshold=0.3, max_new_tokens=20)
    batched = unmask.generate(model, ids, prompt_mask=mask, **kw)
    for i, r in enumerate(rows):
        alone = unmask.generate(model, r[None], **kw)
        assert batched.token_ids[i, :batched.lengths[i]].tolist() == alone.token_ids[0, :alone.lengths[0]].tolist()
        assert EOS not in batched.token_ids[i].tolist()


def test_d2f_checks_its_model_and_options(model):
    with pytest.raises(ValueError, match="needs a block-causal"):
        unmask.generate(random_model("diffusion", seed=0), random_prompt(3, seed=0), strategy="d2f")
    with pytest.raises(ValueError, match="unknown option 'steps_per_block'"):
        unmask.generate(model, random_prompt(3, seed=0), strategy="d2f", steps_per_block=3)
    with pytest.raises(ValueError, match="add must be above 0"):
        unmask.generate(model, random_prompt(3, seed=0), strategy="d2f", add=0)
