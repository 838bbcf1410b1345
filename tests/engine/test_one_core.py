"""One decoding core: every decoder, any cache, stepped together in the engine, gives each request what
`unmask.generate` gives it alone; exact caches change nothing; refusals and failures stay with their request."""
from __future__ import annotations

import pytest
import torch

import unmask
from conftest import left_pad, random_model, random_prompt
from unmask.engine.engine import Engine
from unmask.engine.request import SamplingParams


@pytest.fixture(scope="module")
def mdm():
    return random_model("diffusion", seed=3, std=0.5)


@pytest.fixture(scope="module")
def small_ar():
    """A verifier for `mdm`: an AR model over the same vocabulary."""
    return random_model("ar", seed=9, dim=16, n_layers=1)


@pytest.fixture(scope="module")
def bd():
    return random_model("block-diffusion", seed=5, std=0.5)  # model block size 4


@pytest.fixture(scope="module")
def ar():
    return random_model("ar", seed=5, ahead=3)  # drafts 3 ahead: runs both 'ar' and 'isd'


EARLY_PROMPT = (8, 142)
EARLY = dict(strategy="low_confidence", max_new_tokens=16, block_size=8, stop_at_eos=False)


def alone(model, prompt: list[int], **options) -> tuple[list[int], bool]:
    out = unmask.generate(model, torch.tensor([prompt]), **options)
    return out.sequences[0], out.finished[0]


def run_together(model, jobs, max_running: int = 4, **engine_kw):
    """Requests ((prompt length, prompt seed), options) through one engine; returns [(request, prompt, options)]."""
    eng = Engine(model, max_running=max_running, **engine_kw)
    runs = []
    for (n, seed), options in jobs:
        prompt = random_prompt(n, seed=seed)[0].tolist()
        runs.append((eng.add_request(prompt, SamplingParams(**options)), prompt, options))
    most = 0
    while eng.has_work():
        eng.step()
        most = max(most, eng.running)
    assert most == min(max_running, len(jobs))  # requests really stepped together
    reasons = {req.finish_reason for req, _, _ in runs}
    assert reasons == {"stop", "length"}  # both ways to finish happen in the mix
    return eng, runs


def assert_each_as_alone(model, runs):
    for req, prompt, options in runs:
        tokens, finished = alone(model, prompt, **options)
        assert req.output_ids == tokens, options
        assert req.finish_reason == ("stop" if finished else "length"), options


def assert_all_slots_free(eng):
    for pool in eng.runner.pools.values():
        assert pool.free_tokens == pool.n_pages * pool.page
    assert not eng.runner.rows and not eng.runner.tables


# -- every decoder in one engine equals itself alone ----------------------------------------------------

def test_diffusion_rules_and_caches_step_together_as_alone(mdm, small_ar):
    jobs = [
        ((6, 3), dict(strategy="low_confidence", max_new_tokens=24, block_size=8)),  # ends at EOS
        ((6, 6), dict(strategy="threshold", threshold=0.5, cache="none", max_new_tokens=24, block_size=8)),  # EOS
        ((9, 101), dict(strategy="threshold", threshold=0.5, cache="none", max_new_tokens=16, block_size=8,
                        stop_at_eos=False)),
        ((4, 102), dict(strategy="threshold", threshold=0.5, cache="prefix", max_new_tokens=16, block_size=4,
                        stop_at_eos=False)),
        ((7, 103), dict(strategy="threshold", threshold=0.5, cache="dual", max_new_tokens=24, block_size=8,
                        stop_at_eos=False)),
        ((6, 104), dict(strategy="threshold", threshold=0.5, cache="delayed", refresh_every=3, max_new_tokens=16,
                        block_size=8, stop_at_eos=False)),
        ((3, 105), dict(strategy="factor", factor=2.0, max_new_tokens=12, block_size=4)),
        (EARLY_PROMPT, dict(EARLY, early_commit=0.8)),
        ((5, 106), dict(strategy="verifier", verifier=small_ar, threshold=0.2, accept=0.05, max_new_tokens=16,
                        block_size=8, stop_at_eos=False)),
        ((4, 107), dict(strategy="low_confidence", temperature=1.0, seed=9, max_new_tokens=12, block_size=4,
                        stop_at_eos=False)),
        ((6, 108), dict(strategy="threshold", cache="dual", temperature=0.7, seed=4, max_new_tokens=16,
                        block_size=8)),
        ((6, 1), dict(max_new_tokens=16)),  # the diffusion default (threshold, entropy, dual cache): ends at EOS
    ]
    eng, runs = run_together(mdm, jobs)
    assert_each_as_alone(mdm, runs)
    assert_all_slots_free(eng)
    assert eng.runner.verifier_passes > 0


def test_early_commit_fires_midway_on_this_model(mdm):
    """So that the early-commit request above tests early commit: it fires, after a few steps."""
    prompt = random_prompt(EARLY_PROMPT[0], seed=EARLY_PROMPT[1])
    early = unmask.generate(mdm, prompt, early_commit=0.8, **EARLY)
    assert 1 < early.nfe < unmask.generate(mdm, prompt, **EARLY).nfe == 16


def test_block_diffusion_decoders_step_together_as_alone(bd):
    jobs = [
        ((5, 110), dict(max_new_tokens=16)),  # the block-diffusion default: d2f
        ((3, 111), dict(strategy="d2f", threshold=0.3, add=0.2, max_new_tokens=20, stop_at_eos=False)),
        ((6, 112), dict(strategy="d2f", temperature=0.8, seed=2, max_new_tokens=12, stop_at_eos=False)),
        ((6, 6), dict(strategy="threshold", threshold=0.3, cache="exact", max_new_tokens=24, block_size=4)),  # EOS
        ((7, 113), dict(strategy="threshold", threshold=0.3, cache="exact", max_new_tokens=16, block_size=4,
                        stop_at_eos=False)),
        ((8, 114), dict(strategy="threshold", threshold=0.3, cache="none", max_new_tokens=12, block_size=6,
                        stop_at_eos=False)),
        ((4, 115), dict(strategy="low_confidence", max_new_tokens=14, stop_at_eos=False)),
    ]
    eng, runs = run_together(bd, jobs)
    assert_each_as_alone(bd, runs)
    assert_all_slots_free(eng)


def test_autoregressive_decoders_step_together_as_alone(ar):
    jobs = [
        ((5, 120), dict(strategy="ar", cache="exact", max_new_tokens=12, stop_at_eos=False)),
        ((3, 121), dict(strategy="ar", cache="none", max_new_tokens=10, stop_at_eos=False)),
        ((6, 2), dict(strategy="ar", cache="none", max_new_tokens=24)),  # ends at EOS
        ((5, 100), dict(strategy="isd", max_new_tokens=20, stop_at_eos=False)),  # some drafts hold
        ((6, 21), dict(strategy="isd", max_new_tokens=24)),  # ends at EOS
        ((4, 122), dict(strategy="ar", temperature=0.8, top_k=20, seed=5, max_new_tokens=10, stop_at_eos=False)),
        ((6, 123), dict(strategy="isd", temperature=1.0, seed=3, max_new_tokens=16, stop_at_eos=False)),
        ((8, 124), dict(max_new_tokens=9)),
    ]
    eng, runs = run_together(ar, jobs)
    assert_each_as_alone(ar, runs)
    assert_all_slots_free(eng)
    isd = runs[3][0]
    assert isd.nfe < len(isd.output_ids) == 20  # greedy drafts were accepted inside the batch


# -- exact caches give the uncached tokens ---------------------------------------------------------------

@pytest.mark.parametrize("n", [4, 8])  # a prompt on the model's block grid and one off it
def test_exact_cache_equals_no_cache_for_block_diffusion(bd, n):
    prompt = random_prompt(n + 1, seed=n)[0].tolist()
    kw = dict(strategy="threshold", threshold=0.3, max_new_tokens=20, block_size=4, stop_at_eos=False)
    exact, _ = alone(bd, prompt, cache="exact", **kw)
    plain, _ = alone(bd, prompt, cache="none", **kw)
    assert exact == plain and len(exact) == 20


def test_exact_cache_equals_no_cache_for_ar(ar):
    eng = Engine(ar, max_running=4)
    prompts = [random_prompt(n, seed=30 + n)[0].tolist() for n in (2, 5, 9)]
    reqs = {c: [eng.add_request(p, SamplingParams(strategy="ar", cache=c, max_new_tokens=14, stop_at_eos=False))
                for p in prompts] for c in ("exact", "none")}
    while eng.has_work():
        eng.step()
    for a, b in zip(reqs["exact"], reqs["none"]):
        assert a.output_ids == b.output_ids and len(a.output_ids) == 14


@pytest.mark.parametrize("cache", ["prefix", "dual", "delayed"])
def test_refresh_every_one_is_the_uncached_computation(mdm, cache):
    prompt = random_prompt(6, seed=11)[0].tolist()
    kw = dict(strategy="threshold", threshold=0.5, max_new_tokens=24, block_size=8, stop_at_eos=False)
    assert alone(mdm, prompt, cache=cache, refresh_every=1, **kw) == alone(mdm, prompt, cache="none", **kw)


# -- refusals and failures -------------------------------------------------------------------------------

REFUSED = [
    ("diffusion", dict(strategy="threshold", add=0.2), "does not take add"),
    ("diffusion", dict(strategy="threshold", cache="exact"), "'exact' needs a block-causal"),
    ("diffusion", dict(strategy="threshold", accept=0.3), "does not take accept"),
    ("diffusion", dict(strategy="ar"), "needs an autoregressive model"),
    ("diffusion", dict(strategy="threshold", top_k=5), "set temperature above 0"),
    ("diffusion", dict(strategy="threshold", cache="none", refresh_every=2), "needs an approximate cache"),
    ("block-diffusion", dict(strategy="d2f", cache="none"), "can only be 'exact'"),
    ("block-diffusion", dict(strategy="threshold", cache="dual"), "approximate cache for bidirectional"),
    ("ar", dict(strategy="ar", top_k=5), "set temperature above 0"),
    ("ar", dict(strategy="isd"), "trained to propose ahead"),
]


@pytest.mark.parametrize("kind,options,message", REFUSED, ids=[m for _, _, m in REFUSED])
def test_an_unsupported_option_is_refused_at_add_request_and_changes_nothing(kind, options, message):
    model = random_model(kind, dim=16, n_layers=1)
    eng = Engine(model)
    with pytest.raises(ValueError, match=message):
        eng.add_request([5, 6, 7], SamplingParams(max_new_tokens=8, **options))
    assert not eng.has_work() and not eng.requests and not eng.waiting_rows and not eng.runner.rows
    ok = eng.generate([[5, 6, 7]], SamplingParams(max_new_tokens=8))[0]  # the engine still serves
    assert ok.finish_reason in ("stop", "length") and ok.output_ids == alone(model, [5, 6, 7], max_new_tokens=8)[0]


@pytest.mark.parametrize("fail_at", [1, 3])
def test_a_request_failing_inside_a_step_fails_alone(mdm, small_ar, monkeypatch, fail_at):
    eng = Engine(mdm, max_running=4)
    jobs = [
        (5, dict(strategy="threshold", threshold=0.5, cache="dual", max_new_tokens=16, block_size=8,
                 stop_at_eos=False)),
        (7, dict(strategy="low_confidence", max_new_tokens=16, block_size=4, stop_at_eos=False)),  # fails
        (4, dict(strategy="verifier", verifier=small_ar, threshold=0.2, max_new_tokens=12, block_size=4,
                 stop_at_eos=False)),
        (6, dict(strategy="threshold", cache="delayed", max_new_tokens=16, block_size=8, stop_at_eos=False)),
        (3, dict(strategy="factor", factor=2.0, max_new_tokens=8, block_size=4, stop_at_eos=False)),
    ]
    runs = []
    for i, (n, options) in enumerate(jobs):
        prompt = random_prompt(n, seed=200 + i)[0].tolist()
        runs.append((eng.add_request(prompt, SamplingParams(**options)), prompt, options))
    bad = runs[1][0]
    row = eng.row(bad.request_id)
    real, calls = row.take, []

    def take(logits):
        calls.append(1)
        if len(calls) == fail_at:
            raise RuntimeError("boom")
        real(logits)

    monkeypatch.setattr(row, "take", take)
    while eng.has_work():
        eng.step()
    assert bad.finish_reason == "error" and "boom" in bad.error and len(calls) == fail_at
    assert eng.stats.requests_failed == 1 and eng.stats.requests_finished == 4
    assert_each_as_alone(mdm, [r for r in runs if r[0] is not bad])
    assert_all_slots_free(eng)


# -- unmask.generate: a batch row gets what it gets alone ------------------------------------------------

BATCHED = [
    ("mdm", dict(strategy="threshold", threshold=0.5, cache="dual", max_new_tokens=16, block_size=8)),
    ("bd", dict(strategy="d2f", max_new_tokens=16)),
    ("ar", dict(strategy="ar", max_new_tokens=12)),
    ("ar", dict(strategy="isd", max_new_tokens=16)),
]


@pytest.mark.parametrize("which,options", BATCHED, ids=[o["strategy"] for _, o in BATCHED])
@pytest.mark.parametrize("padded", [False, True], ids=["equal", "left-padded"])
def test_generate_batch_rows_equal_their_alone_output(request, which, options, padded):
    model = request.getfixturevalue(which)
    if padded:
        rows = [random_prompt(n, seed=300 + n)[0] for n in (3, 7, 5)]
        ids, mask = left_pad(rows, model.pad_token_id)
    else:
        ids, mask = random_prompt(6, seed=301, batch=3), None
        rows = list(ids)
    out = unmask.generate(model, ids, prompt_mask=mask, **options)
    assert len(out.sequences) == 3
    for i, r in enumerate(rows):
        tokens, finished = alone(model, r.tolist(), **options)
        assert out.sequences[i] == tokens, f"row {i}"
        assert out.finished[i] == finished
