"""EOS handling: generate never returns EOS or what follows it, and an ended row costs nothing more."""
from __future__ import annotations

import pytest
import torch

import unmask
from conftest import EOS, MASK, PAD, left_pad, random_model, random_prompt
from unmask.decode.result import GenerationResult


def test_result_sequences_and_token_count():
    """sequences are the rows up to their length; n_tokens counts each row's EOS too."""
    r = GenerationResult(torch.tensor([[5, 6, PAD], [7, 8, 9]]), [2, 3], [True, False], nfe=3, seconds=0.1)
    assert r.sequences == [[5, 6], [7, 8, 9]]
    assert r.n_tokens == 6


class EosAt(torch.nn.Module):
    """Wraps a random model and makes EOS the top choice at chosen positions (columns) of every row.

    Rows are told apart by their prompt lengths: a position inside a row's prompt never ends it."""

    def __init__(self, kind: str, positions: set[int]):
        super().__init__()
        self.inner = random_model(kind, seed=1)
        self.positions = positions
        for name in ("config", "tokenizer", "mask_token_id", "eos_token_id", "pad_token_id"):
            setattr(self, name, getattr(self.inner, name))

    def forward(self, ids, positions=None, **kw):
        logits = self.inner(ids, positions, **kw)
        pos = positions if positions is not None else torch.arange(ids.shape[1]).expand_as(ids)
        for p in self.positions:
            logits[pos == p, EOS] += 50.0
        return logits


def prompts(*lengths: int) -> tuple[torch.Tensor, torch.Tensor]:
    return left_pad([random_prompt(n, seed=n)[0] for n in lengths])


@pytest.mark.parametrize("kind, strategy", [("diffusion", "low_confidence"), ("diffusion", "random"), ("ar", "ar")])
def test_generate_never_returns_eos_or_what_follows(kind, strategy):
    """With stop_at_eos, each row stops before its first EOS; finished flags say which rows ended."""
    shift = 1 if kind == "ar" else 0  # AR logits at position p predict token p+1; diffusion logits at p score p
    model = EosAt(kind, {7 - shift, 18 - shift})  # row 0 (prompt 4) ends after 3 tokens, row 1 (8) after 10
    ids, mask = prompts(4, 8, 20)  # row 2's answer holds neither position
    kw = dict(strategy=strategy, max_new_tokens=16, seed=0, prompt_mask=mask, **({} if kind == "ar" else {"block_size": 4}))
    out = unmask.generate(model, ids, **kw)
    assert not bool((out.token_ids == EOS).any())
    assert not bool((out.token_ids == MASK).any())
    assert out.lengths == [3, 10, 16]
    assert out.finished == [True, True, False]
    full = unmask.generate(model, ids, stop_at_eos=False, **kw)
    for row in range(3):
        n = out.lengths[row]
        assert out.token_ids[row, :n].tolist() == full.token_ids[row, :n].tolist()
        if out.finished[row]:
            assert full.token_ids[row, n] == EOS
        assert bool((out.token_ids[row, n:] == PAD).all())


def test_diffusion_skips_blocks_once_every_row_ended():
    """When every row has an EOS, later blocks are never computed (fewer forwards)."""
    model = EosAt("diffusion", {4 + 1})
    prompt = random_prompt(4, seed=3)
    out = unmask.generate(model, prompt, strategy="low_confidence", max_new_tokens=16, block_size=4)
    assert out.lengths == [1] and out.finished == [True]
    assert out.nfe == 4 and out.steps_per_block == [4]
    full = unmask.generate(model, prompt, strategy="low_confidence", max_new_tokens=16, block_size=4,
                           stop_at_eos=False)
    assert full.nfe == 16


def test_ar_stops_early_when_every_row_ended():
    """AR decoding stops calling the model once all rows produced EOS."""
    model = EosAt("ar", {5, 10})  # row 0 (prompt 4): EOS is token 6, row 1 (prompt 7): token 11
    ids, mask = prompts(4, 7)
    out = unmask.generate(model, ids, prompt_mask=mask, strategy="ar", max_new_tokens=12)
    assert out.lengths == [2, 4] and out.finished == [True, True]
    assert out.nfe == 5  # prefill + 4 single-token steps; the 5th token (row 1's EOS) needs no forward after it


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_an_ended_row_costs_its_batch_nothing(cache):
    """A row past its EOS takes part in no more passes: the batch takes the steps the live row alone
    would, and each row's text is what it would be decoded alone."""
    model = EosAt("diffusion", {4 + 2})
    ids, mask = prompts(4, 8)
    kw = dict(strategy="threshold", threshold=0.3, max_new_tokens=16, block_size=4, cache=cache)
    both = unmask.generate(model, ids, prompt_mask=mask, **kw)
    assert both.lengths[0] == 2 and both.finished[0]
    solo = [unmask.generate(model, random_prompt(n, seed=n), **kw) for n in (4, 8)]
    assert both.sequences == [solo[0].sequences[0], solo[1].sequences[0]]
    assert both.solo_nfe == [solo[0].nfe, solo[1].nfe]
    assert both.nfe == solo[1].nfe and both.steps_per_block == solo[1].steps_per_block


@pytest.mark.parametrize("kind, strategy, extra", [
    ("diffusion", "low_confidence", {}), ("diffusion", "threshold", {"threshold": 0.5, "cache": "dual"}),
    ("diffusion", "low_confidence", {"early_commit": (3.0, 2.0, 1.0)}), ("ar", "ar", {})])
def test_solo_nfe_is_what_each_row_costs_alone(kind, strategy, extra):
    """A batch runs until its slowest row is done; each row's solo count is the passes it needs decoded alone."""
    shift = 1 if kind == "ar" else 0
    lengths = (4, 17, 7)  # row 0 ends after 2 tokens, row 2 after 9, row 1 never

    def model_for() -> torch.nn.Module:
        if extra.get("early_commit"):  # wide logit gaps: rows commit early, each at its own step
            return random_model("diffusion", seed=4, std=0.6)
        return EosAt(kind, {4 + 2 - shift, 7 + 9 - shift})

    model = model_for()
    ids, mask = prompts(*lengths)
    kw = dict(strategy=strategy, max_new_tokens=16, **({} if kind == "ar" else {"block_size": 4}), **extra)
    batched = unmask.generate(model, ids, prompt_mask=mask, **kw)
    alone = [unmask.generate(model, random_prompt(n, seed=n), **kw).nfe for n in lengths]
    assert batched.solo_nfe == alone
    assert batched.row_forwards == sum(alone)
    assert max(alone) <= batched.nfe < sum(alone)  # rows share passes
    assert len(set(alone)) > 1  # the rows differ, so the batch's count is not everyone's
