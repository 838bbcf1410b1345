"""Step-rule names -> classes (the block decoders' rules). Options are checked by the spec first."""
from __future__ import annotations

from typing import Any

from unmask.decode.strategies.base import Strategy
from unmask.decode.strategies.factor import Factor
from unmask.decode.strategies.family import BlockQuota, SubBlocks
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
    "sdar": BlockQuota,
    "llada2": BlockQuota,  # SDAR's `dynamic` rule, its default
    "fast_dllm_v2": SubBlocks,
}


def make_strategy(name: str, **params: Any) -> Strategy:
    return STRATEGIES[name](**params)
