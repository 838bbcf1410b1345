"""Strategy names -> classes. Unknown names and parameters fail loudly, with the known ones listed."""
from __future__ import annotations

import inspect
from typing import Any

from unmask.decode.strategies.base import Strategy
from unmask.decode.strategies.factor import Factor
from unmask.decode.strategies.low_confidence import LowConfidence
from unmask.decode.strategies.random_remask import RandomRemask
from unmask.decode.strategies.threshold import Threshold
from unmask.decode.strategies.verifier import Verifier

STRATEGIES: dict[str, type[Strategy]] = {
    "low_confidence": LowConfidence,
    "random": RandomRemask,
    "threshold": Threshold,
    "factor": Factor,
    "verifier": Verifier,
}
AR_STRATEGY = "ar"  # left-to-right decoding of causal models (unmask.decode.autoregressive)
D2F_STRATEGY = "d2f"  # pipelined inter-block decoding of block-causal models (unmask.decode.pipeline)
ISD_STRATEGY = "isd"  # introspective strided decoding of causal models trained to draft ahead (unmask.decode.strided)


def strategy_names() -> list[str]:
    return [*STRATEGIES, D2F_STRATEGY, AR_STRATEGY, ISD_STRATEGY]


def make_strategy(name: str, **params: Any) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known strategies: {', '.join(strategy_names())}")
    cls = STRATEGIES[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        takes = ", ".join(sorted(accepted)) or "no parameters"
        raise ValueError(f"strategy {name!r} does not take {', '.join(unknown)} (it takes {takes})")
    return cls(**params)
