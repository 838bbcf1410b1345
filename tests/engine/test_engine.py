"""The engine with a model: batched requests at different stages equal `generate` alone; slots free up."""
from __future__ import annotations

import pytest
import torch

import unmask
from conftest import random_model, random_prompt
from unmask.engine.engine import Engine
from unmask.engine.packing import plan_passes
from unmask.engine.request import SamplingParams


@pytest.fixture(scope="module")
def mdm():
    return random_model("diffusion", seed=2)


@pytest.fixture(scope="module")
def ar():
    return random_model("ar", seed=2)


def alone(model, prompt, params):
    return unmask.generate(model, torch.tensor([prompt]), **params.options).sequences[0]


def test_mixed_rules_and_stages_step_together_and_match_generate(mdm):
    eng = Engine(mdm, max_running=3)
    jobs = [(random_prompt(n, seed=n)[0].tolist(), p) for n, p in [
        (5, SamplingParams(max_new_tokens=16, strategy="low_confidence", block_size=8)),
        (9, SamplingParams(max_new_tokens=12, strategy="threshold", block_size=4, threshold=0.2)),
        (3, SamplingParams(max_new_tokens=8, strategy="factor", factor=2.0)),
        (7, SamplingParams(max_new_tokens=16, strategy="random", block_size=16, seed=3)),
        (4, SamplingParams(max_new_tokens=10, strategy="low_confidence", steps=5, temperature=1.0, seed=9))]]
    reqs = [eng.add_request(p, params) for p, params in jobs]
    most = 0
    while eng.has_work():
        eng.step()
        most = max(most, eng.running)
    assert most == 3  # the cap held, and requests joined as others left
    for r, (p, params) in zip(reqs, jobs):
        assert r.finished and r.finish_reason in ("stop", "length")
        assert r.output_ids == alone(mdm, p, params), r.request_id


def test_ar_rows_with_their_own_caches_match_generate(ar):
    eng = Engine(ar, max_running=4)
    prompts = [random_prompt(n, seed=20 + n)[0].tolist() for n in (3, 8, 5, 6, 2)]
    params = SamplingParams(max_new_tokens=9)
    for r, p in zip(eng.generate(prompts, params), prompts):
        assert r.output_ids == alone(ar, p, SamplingParams(max_new_tokens=9, strategy="ar"))


def test_streamed_pieces_are_in_order_and_add_up(mdm):
    eng = Engine(mdm)
    p = random_prompt(6, seed=1)[0].tolist()
    params = SamplingParams(max_new_tokens=16, strategy="threshold", block_size=8, threshold=0.3)
    r = eng.add_request(p, params)
    pieces = []
    while eng.has_work():
        pieces += [o.new_token_ids for o in eng.step()]
    assert sum(pieces, []) == r.output_ids == alone(mdm, p, params)


def test_cancel_frees_the_slot_for_the_next_request(mdm):
    eng = Engine(mdm, max_running=1)
    params = SamplingParams(max_new_tokens=16, block_size=16)
    a = eng.add_request(random_prompt(4, seed=1)[0].tolist(), params)
    b = eng.add_request(random_prompt(4, seed=2)[0].tolist(), params)
    eng.step()
    eng.cancel(a.request_id)
    assert a.finish_reason == "cancelled" and a.request_id not in eng.runner.rows
    eng.step()
    assert eng.running == 1 and b.nfe == 1
    while eng.has_work():
        eng.step()
    assert b.finish_reason in ("stop", "length") and eng.stats.requests_cancelled == 1


def test_a_failing_request_fails_alone(mdm, monkeypatch):
    eng = Engine(mdm)
    params = SamplingParams(max_new_tokens=8, block_size=8)
    good = eng.add_request(random_prompt(4, seed=1)[0].tolist(), params)
    bad = eng.add_request(random_prompt(5, seed=2)[0].tolist(), params)

    def boom(logits):
        raise RuntimeError("boom")

    monkeypatch.setattr(eng.row(bad.request_id), "take", boom)
    while eng.has_work():
        eng.step()
    assert bad.finish_reason == "error" and "boom" in bad.error
    assert good.finish_reason in ("stop", "length") and good.output_ids == alone(mdm, good.prompt_ids, params)


def test_bad_requests_are_refused_before_they_wait(mdm):
    eng = Engine(mdm, max_tokens=64)
    with pytest.raises(ValueError, match="unknown strategy"):
        eng.add_request([5, 6], SamplingParams(strategy="nope"))
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        eng.add_request([5, 6], SamplingParams(max_new_tokens=0))
    with pytest.raises(ValueError, match="prompt is empty"):
        eng.add_request([], SamplingParams())
    with pytest.raises(ValueError, match="token slots"):
        eng.add_request([5] * 10, SamplingParams(max_new_tokens=60))
    assert not eng.has_work() and not eng.runner.rows


@pytest.mark.parametrize("shift", [False, True])
def test_dual_cache_rows_match_generate_with_dual_cache(shift):
    model = random_model("diffusion", seed=4, logits_shift=shift)
    eng = Engine(model, max_running=4)
    jobs = [(random_prompt(n, seed=40 + n)[0].tolist(), p) for n, p in [
        (5, SamplingParams(max_new_tokens=16, strategy="threshold", block_size=8, cache="dual",
                           threshold=0.2)),
        (11, SamplingParams(max_new_tokens=24, strategy="low_confidence", block_size=8, cache="dual")),
        (3, SamplingParams(max_new_tokens=12, strategy="factor", block_size=4, cache="dual", factor=2.0)),
        (8, SamplingParams(max_new_tokens=16, strategy="low_confidence", block_size=8)),  # uncached, same batch
        (6, SamplingParams(max_new_tokens=8, strategy="threshold", block_size=4, cache="dual",
                           threshold=0.3))]]
    reqs = [eng.add_request(p, params) for p, params in jobs]
    while eng.has_work():
        eng.step()
    for r, (p, params) in zip(reqs, jobs):
        assert r.output_ids == alone(model, p, params), r.request_id


@pytest.fixture(scope="module")
def bd():
    return random_model("block-diffusion", seed=5, std=0.5)  # model block size 4


def test_block_causal_rows_with_exact_prefixes_match_generate_without_cache(bd):
    """Rules and the D2F pipeline, prompts off and on the block grid, joining as others leave: every
    request gets the tokens of decoding it alone with everything recomputed (d2f: its own decoder)."""
    jobs = [(random_prompt(n, seed=60 + n)[0].tolist(), p) for n, p in [
        (5, SamplingParams(max_new_tokens=16, strategy="threshold", block_size=4, threshold=0.3)),
        (8, SamplingParams(max_new_tokens=12, strategy="low_confidence", block_size=4, stop_at_eos=False)),
        (3, SamplingParams(max_new_tokens=20, strategy="d2f", threshold=0.3, add=0.2,
                           stop_at_eos=False)),
        (7, SamplingParams(max_new_tokens=14, strategy="factor", block_size=6, factor=2.0)),
        (6, SamplingParams(max_new_tokens=24, strategy="d2f", threshold=0.5, activate=0.5)),
        (9, SamplingParams(max_new_tokens=16, strategy="low_confidence", block_size=8, steps=4, cache="exact")),
        (4, SamplingParams(max_new_tokens=18, strategy="d2f", stop_at_eos=False))]]
    eng = Engine(bd, max_running=4)
    reqs = [eng.add_request(p, params) for p, params in jobs]
    while eng.has_work():
        eng.step()
    for r, (p, params) in zip(reqs, jobs):
        ref = unmask.generate(bd, torch.tensor([p]), **params.options)
        assert r.output_ids == ref.sequences[0], r.request_id
        assert r.finish_reason == ("stop" if ref.finished[0] else "length")


def test_block_causal_passes_never_recompute_finished_blocks(bd, monkeypatch):
    """After a row's first pass, no pass runs a column of a finished model block again."""
    widths = []
    real = bd.forward

    def spy(ids, *a, **kw):
        widths.append(ids.shape[1])
        return real(ids, *a, **kw)

    monkeypatch.setattr(bd, "forward", spy)
    prompt = random_prompt(8, seed=1)[0].tolist()  # on the grid: blocks of 4 after 8 prompt tokens
    eng = Engine(bd)
    req = eng.generate([prompt], SamplingParams(max_new_tokens=16, strategy="low_confidence", block_size=4,
                                                stop_at_eos=False))[0]
    assert len(req.output_ids) == 16 and eng.stats.forward_passes == len(widths)  # /metrics counts real passes
    assert widths[0] == 12  # the prompt and the first block
    assert max(widths[1:]) <= 8  # at most the finished previous block, riding along once, and this one


def test_block_causal_rows_refuse_an_approximate_cache(bd):
    with pytest.raises(ValueError, match="approximate cache for bidirectional"):
        Engine(bd).add_request([5, 6], SamplingParams(max_new_tokens=8, strategy="threshold", cache="dual"))
    with pytest.raises(ValueError, match="strategy 'd2f' does not take factor"):
        Engine(bd).add_request([5, 6], SamplingParams(max_new_tokens=8, strategy="d2f", factor=1.0))
    with pytest.raises(ValueError, match="needs a block-causal"):
        Engine(random_model("diffusion")).add_request([5, 6], SamplingParams(max_new_tokens=8, strategy="d2f"))


def test_a_block_diffusion_model_defaults_to_the_d2f_pipeline_like_generate(bd):
    prompt = random_prompt(5, seed=3)[0].tolist()
    req = Engine(bd).generate([prompt], SamplingParams(max_new_tokens=16))[0]
    assert req.output_ids == unmask.generate(bd, torch.tensor([prompt]), max_new_tokens=16).sequences[0]


def test_block_diffusion_rows_default_to_the_models_block_like_generate():
    """Without a block size, the engine decodes a block-causal model in its own blocks, as `generate` does."""
    model = random_model("block-diffusion", seed=5, std=0.5)
    params = SamplingParams(max_new_tokens=12, strategy="low_confidence", stop_at_eos=False)
    prompts = [random_prompt(n, seed=50 + n)[0].tolist() for n in (3, 6)]
    for r, p in zip(Engine(model).generate(prompts, params), prompts):
        assert r.output_ids == alone(model, p, params)
        assert r.output_ids != alone(model, p, SamplingParams(max_new_tokens=12, strategy="low_confidence",
                                                              block_size=32, stop_at_eos=False))


def test_passes_group_rows_of_similar_width():
    """A prefilling row (wide window) gets its own pass when padding the others to it costs more than a pass."""
    assert plan_passes([50, 10, 12, 11], overhead=20) == [[0], [1, 2, 3]]
    assert plan_passes([50, 10, 12, 11], overhead=200) == [[0, 1, 2, 3]]  # passes are dear: one pass
    assert plan_passes([8, 8, 8], overhead=0) == [[0, 1, 2]]  # equal widths never split
    groups = plan_passes([30, 5, 60, 7, 33, 9, 61], overhead=16)
    assert sorted(i for g in groups for i in g) == list(range(7))
    assert groups == [[2, 6], [0, 4], [1, 3, 5]]
