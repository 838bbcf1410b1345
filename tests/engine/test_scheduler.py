"""The scheduler alone: no model, no torch. Order, caps, no starvation, cancellation."""
from __future__ import annotations

import sys

import pytest

from unmask.engine.request import Request, SamplingParams, Status
from unmask.engine.scheduler import Scheduler


def req(prompt_len: int = 4, new: int = 4) -> Request:
    return Request([5] * prompt_len, SamplingParams(max_new_tokens=new), footprint=prompt_len + new)


def test_scheduler_module_does_not_need_torch():
    import importlib
    import unmask.engine.scheduler as mod
    saved = sys.modules.pop("torch", None)
    try:
        sys.modules["torch"] = None  # any import of torch would now fail
        importlib.reload(mod)
    finally:
        if saved is not None:
            sys.modules["torch"] = saved
        importlib.reload(mod)


def test_admits_in_arrival_order_up_to_the_request_cap():
    s = Scheduler(max_running=2)
    a, b, c = req(), req(), req()
    for r in (a, b, c):
        s.add(r)
    assert s.schedule() == [a, b]
    assert c.status is Status.WAITING and a.status is Status.RUNNING
    a.status = Status.FINISHED  # a finished request leaves; the next waiting one joins at the next step
    assert s.schedule() == [b, c]


def test_token_cap_and_no_overtaking():
    s = Scheduler(max_running=10, max_tokens=20)
    big, small = req(8, 8), req(1, 1)  # footprints 16 and 2
    first = req(2, 2)  # footprint 4
    for r in (first, big, small):
        s.add(r)
    assert s.schedule() == [first, big]  # 4 + 16 = 20 fits exactly
    s2 = Scheduler(max_running=10, max_tokens=20)
    early, big2, small2 = req(4, 4), req(8, 8), req(1, 1)
    for r in (early, big2, small2):
        s2.add(r)
    assert s2.schedule() == [early]  # 8 + 16 > 20: big waits, and small may not overtake it
    early.status = Status.FINISHED
    assert s2.schedule() == [big2, small2]


def test_a_request_larger_than_the_engine_is_refused():
    with pytest.raises(ValueError, match="needs 40 token slots"):
        Scheduler(max_tokens=32).add(req(20, 20))


def test_drop_removes_waiting_or_running():
    s = Scheduler(max_running=1)
    a, b = req(), req()
    s.add(a)
    s.add(b)
    s.schedule()
    assert s.drop(b.request_id) is b and not s.waiting
    assert s.drop(a.request_id) is a and not s.running
    assert s.drop("nope") is None and not s.has_work()
