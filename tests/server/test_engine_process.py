"""The server's engine process, driven directly: what a client sees when it stops or dies under load."""
from __future__ import annotations

import asyncio

import pytest
import torch

import unmask
from unmask.engine.request import SamplingParams
from unmask.server.serving import SHUTTING_DOWN, AsyncEngine, EngineUnavailable


@pytest.fixture()
def engine(trained_mdm):
    eng = AsyncEngine(unmask.load_model(str(trained_mdm[0])), max_running=4)
    eng.start()
    yield eng
    eng.stop()


def long_request() -> SamplingParams:
    """64 passes at least: it never ends at an EOS, so it is still running when the test acts."""
    return SamplingParams(max_new_tokens=64, block_size=4, strategy="low_confidence", stop_at_eos=False)


async def first_then_rest(engine: AsyncEngine, then) -> list:
    sub = engine.submit([5, 6, 7], long_request())
    outs = []
    async for out in engine.outputs([sub]):
        if not outs:
            await asyncio.to_thread(then)
        outs.append(out)
    return outs


def test_answers_match_generate_and_a_bad_request_is_refused_before_it_runs(engine, trained_mdm):
    async def ask():
        sub = engine.submit([5, 6, 7], SamplingParams(max_new_tokens=8, block_size=8))
        return [t for out in [o async for o in engine.outputs([sub])] for t in out.new_token_ids]

    ref = unmask.generate(unmask.load_model(str(trained_mdm[0])), torch.tensor([[5, 6, 7]]), max_new_tokens=8,
                          block_size=8)
    assert asyncio.run(ask()) == ref.sequences[0]

    async def bad():
        engine.submit([5, 6, 7], SamplingParams(max_new_tokens=8, strategy="nonexistent"))
    with pytest.raises(ValueError, match="unknown strategy 'nonexistent'"):
        asyncio.run(bad())
    assert not engine.subs  # refused here: nothing reached the engine process


def test_a_dead_engine_process_ends_every_request_with_an_error_and_refuses_new_ones(engine):
    outs = asyncio.run(first_then_rest(engine, engine.process.kill))
    assert outs[-1].finished and outs[-1].finish_reason == "aborted"
    assert "engine process stopped" in outs[-1].error
    assert not engine.accepting

    async def again():
        engine.submit([5, 6, 7], long_request())
    with pytest.raises(EngineUnavailable, match="engine process stopped"):
        asyncio.run(again())


def test_stop_ends_requests_in_flight_with_a_clean_shutdown_error(engine):
    outs = asyncio.run(first_then_rest(engine, engine.stop))
    assert outs[-1].finished and outs[-1].finish_reason == "aborted" and outs[-1].error == SHUTTING_DOWN
    assert not engine.process.is_alive()
