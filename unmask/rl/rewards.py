"""RL rewards as plug-ins: a recipe names them with weights, e.g. `{"exact": 1.0, "speed": 0.2}`.

Each reward maps (the answer's text, its example, the forward passes it took, the answer window) to a number
in [0, 1]; a rollout's reward is the weighted sum of the named ones.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

Reward = Callable[[str, Any, int, int], float]


def exact(text: str, example: Any, forwards: int, window: int) -> float:
    """1 when the answer is the example's, as `unmask eval` scores it (stripped text equal)."""
    return float(text.strip() == example.answer)


def partial(text: str, example: Any, forwards: int, window: int) -> float:
    """The share of the answer's positions (space-separated items) that are right, over the longer of the
    two lists, so a missing or an extra item costs as much as a wrong one."""
    got, want = text.split(), example.answer.split()
    if not got and not want:
        return 1.0
    return sum(a == b for a, b in zip(got, want)) / max(len(got), len(want))


def speed(text: str, example: Any, forwards: int, window: int) -> float:
    """Fewer forwards per answer is better: 1 for one pass, falling to 0 at one pass per window position."""
    if window <= 1:
        return 1.0
    return max(0.0, 1.0 - (forwards - 1) / (window - 1))


REWARDS: dict[str, Reward] = {"exact": exact, "partial": partial, "speed": speed}


def check_rewards(weights: Mapping[str, float]) -> None:
    """Refuse an unknown reward or a weight that is not a number, by name."""
    if not weights:
        raise ValueError(f"an RL recipe must name at least one reward ({', '.join(REWARDS)})")
    for name, weight in weights.items():
        if name not in REWARDS:
            raise ValueError(f"unknown reward {name!r}; rewards are {', '.join(REWARDS)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"reward {name!r} needs a numeric weight, not {weight!r}")


def total_reward(weights: Mapping[str, float], text: str, example: Any, forwards: int, window: int) -> float:
    return sum(w * REWARDS[name](text, example, forwards, window) for name, w in weights.items())
