"""EOS handling: cut_at_eos, and generate never returning EOS or what follows it."""
from __future__ import annotations

import pytest
import torch

import unmask
from conftest import EOS, MASK, PAD, random_model, random_prompt
from unmask.decode.result import GenerationResult, cut_at_eos


def test_cut_at_eos_drops_eos_and_everything_after():
    """Rows are cut before their first EOS, right-padded, and report length and finished flags."""
    gen = torch.tensor([[5, 6, EOS, 7, EOS], [5, 6, 7, 8, 9], [EOS, 5, 6, 7, 8]])
    out, lengths, finished = cut_at_eos(gen, EOS, PAD, stop_at_eos=True)
    assert lengths == [2, 5, 0]
    assert finished == [True, False, True]
    assert out.tolist() == [[5, 6, PAD, PAD, PAD], [5, 6, 7, 8, 9], [PAD] * 5]
    assert gen[0, 3] == 7, "the input is not modified"


def test_cut_at_eos_trims_width_to_longest_row():
    out, lengths, finished = cut_at_eos(torch.tensor([[5, EOS, 6], [5, 6, EOS]]), EOS, PAD, True)
    assert out.tolist() == [[5, PAD], [5, 6]]
    assert lengths == [1, 2] and finished == [True, True]


def test_cut_at_eos_disabled_keeps_everything():
    gen = torch.tensor([[5, EOS, 6]])
    out, lengths, finished = cut_at_eos(gen, EOS, PAD, stop_at_eos=False)
    assert out.tolist() == [[5, EOS, 6]] and lengths == [3] and finished == [False]
    assert cut_at_eos(gen, None, PAD, stop_at_eos=True)[1] == [3]


def test_result_sequences_and_token_count():
    """sequences are the rows up to their length; n_tokens counts each row's EOS too."""
    r = GenerationResult(torch.tensor([[5, 6, PAD], [7, 8, 9]]), [2, 3], [True, False], nfe=3, seconds=0.1)
    assert r.sequences == [[5, 6], [7, 8, 9]]
    assert r.n_tokens == 6


class EosAt(torch.nn.Module):
    """Wraps a random model and makes EOS the top choice at chosen absolute positions."""

    def __init__(self, kind: str, positions: dict[int, int]):
        super().__init__()
        self.inner = random_model(kind, seed=1)
        self.positions = positions  # row -> absolute position
        for name in ("config", "tokenizer", "mask_token_id", "eos_token_id", "pad_token_id"):
            setattr(self, name, getattr(self.inner, name))

    def forward(self, ids, positions=None, **kw):
        logits = self.inner(ids, positions, **kw)
        pos = positions if positions is not None else torch.arange(kw.get("start", 0), kw.get("start", 0)
                                                                     + ids.shape[1]).expand_as(ids)
        for row, p in self.positions.items():
            logits[row][pos[row] == p, EOS] += 50.0
        return logits


@pytest.mark.parametrize("kind, strategy", [("diffusion", "low_confidence"), ("diffusion", "random"), ("ar", "ar")])
def test_generate_never_returns_eos_or_what_follows(kind, strategy):
    """With stop_at_eos, each row stops before its first EOS; finished flags say which rows ended."""
    P = 4
    # AR logits at position p predict token p+1; diffusion logits at p score token p.
    shift = 1 if kind == "ar" else 0
    model = EosAt(kind, {0: P + 3 - shift, 1: P + 10 - shift})
    prompt = random_prompt(P, seed=3, batch=3)
    out = unmask.generate(model, prompt, strategy=strategy, max_new_tokens=16, block_size=4, seed=0)
    assert not bool((out.token_ids == EOS).any())
    assert not bool((out.token_ids == MASK).any())
    assert out.lengths[:2] == [3, 10]
    assert out.finished[:2] == [True, True]
    full = unmask.generate(model, prompt, strategy=strategy, max_new_tokens=16, block_size=4, seed=0,
                           stop_at_eos=False)
    for row in range(3):
        n = out.lengths[row]
        assert out.token_ids[row, :n].tolist() == full.token_ids[row, :n].tolist()
        assert out.finished[row] == (EOS in full.token_ids[row].tolist())
        if out.finished[row]:
            assert full.token_ids[row, n] == EOS
        assert bool((out.token_ids[row, n:] == PAD).all())


def test_diffusion_skips_blocks_once_every_row_ended():
    """When every row has an EOS, later blocks are never computed (fewer forwards)."""
    model = EosAt("diffusion", {0: 4 + 1})
    prompt = random_prompt(4, seed=3)
    out = unmask.generate(model, prompt, max_new_tokens=16, block_size=4)
    assert out.lengths == [1] and out.finished == [True]
    assert out.nfe == 4 and out.steps_per_block == [4]
    full = unmask.generate(model, prompt, max_new_tokens=16, block_size=4, stop_at_eos=False)
    assert full.nfe == 16


def test_ar_stops_early_when_every_row_ended():
    """AR decoding stops calling the model once all rows produced EOS."""
    model = EosAt("ar", {0: 4 + 2 - 1, 1: 4 + 4 - 1})
    out = unmask.generate(model, random_prompt(4, seed=5, batch=2), strategy="ar", max_new_tokens=12)
    assert out.lengths == [2, 4] and out.finished == [True, True]
    assert out.nfe == 5  # prefill + 4 single-token steps; the 5th token (row 1's EOS) needs no forward after it


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
def test_an_ended_row_costs_its_batch_nothing(cache):
    """A row past its EOS gets EOS in later blocks without decoding them: the batch takes the steps
    the live row alone would, and each row's text is what it would be decoded alone."""
    model = EosAt("diffusion", {0: 4 + 2})
    prompt = random_prompt(4, seed=7, batch=2)
    kw = dict(strategy="threshold", threshold=0.3, max_new_tokens=16, block_size=4, cache=cache)
    both = unmask.generate(model, prompt, **kw)
    assert both.lengths[0] == 2 and both.finished[0]
    solo = [unmask.generate(model, prompt[:1], **kw), unmask.generate(EosAt("diffusion", {}), prompt[1:], **kw)]
    assert both.token_ids[0, :2].tolist() == solo[0].token_ids[0].tolist()
    assert both.token_ids[1, :both.lengths[1]].tolist() == solo[1].token_ids[0].tolist()
    assert both.steps_per_block[1:] == solo[1].steps_per_block[1:]


@pytest.mark.parametrize("kind, strategy, extra", [
    ("diffusion", "low_confidence", {}), ("diffusion", "threshold", {"threshold": 0.5, "cache": "dual"}),
    ("diffusion", "low_confidence", {"early_commit": (3.0, 2.0, 1.0)}), ("ar", "ar", {})])
def test_solo_nfe_is_what_each_row_costs_alone(kind, strategy, extra):
    """A batch runs until its slowest row is done; each row's solo count is the passes it needs decoded alone."""
    shift = 1 if kind == "ar" else 0
    eos = {0: 4 + 2 - shift, 2: 4 + 9 - shift}  # row -> where it ends; row 1 never does

    def model_for(rows: dict[int, int]) -> torch.nn.Module:
        if extra.get("early_commit"):  # wide logit gaps: rows commit early, each at its own step
            return random_model("diffusion", seed=4, std=0.6)
        return EosAt(kind, rows)

    prompt = random_prompt(4, seed=11, batch=3)
    kw = dict(strategy=strategy, max_new_tokens=16, block_size=4, **extra)
    batched = unmask.generate(model_for(eos), prompt, **kw)
    alone = [unmask.generate(model_for({0: eos[i]} if i in eos else {}), prompt[i:i + 1], **kw).nfe for i in range(3)]
    assert batched.solo_nfe == alone
    assert batched.row_forwards == batched.nfe * 3 >= sum(alone)
    assert len(set(alone)) > 1  # the rows differ, so the batch's count is not everyone's
