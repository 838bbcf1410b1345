"""The decoding settings `unmask bench` compares: the AR twin, vanilla diffusion, and the fast variants.

Each is the exact keyword set a user passes to `unmask.generate` (or the matching CLI flags),
so a row of the report is reproducible with one call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TAU, FACTOR = 0.9, 1.0  # Fast-dLLM's published defaults: the benchmark does not tune them
BLOCK_SIZE = 16
AGGRESSIVE = (0.7, 0.5)  # thresholds below Fast-dLLM's default, for the verifier comparison
VERIFIER, ACCEPT = "sort-ar-small", 0.2


@dataclass(frozen=True)
class Setting:
    """One row of the report: which model ("ar" or "diffusion" role) and the `generate` options."""

    key: str
    label: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)

    def gen_kwargs(self) -> dict[str, Any]:
        return dict(self.options)


def diffusion(key: str, label: str, **options: Any) -> Setting:
    return Setting(key, label, "diffusion", {"block_size": BLOCK_SIZE, **options})


def make_settings(quick: bool = False) -> list[Setting]:
    """AR; vanilla; each parallel rule without and with each cache; early commit on top of two of them."""
    th = {"strategy": "threshold", "threshold": TAU}
    rows = [Setting("ar", "AR greedy (KV cache)", "ar", {"strategy": "ar"}),
            Setting("isd-ar", "sort-isd as plain AR greedy (KV cache)", "isd", {"strategy": "ar"}),
            Setting("isd", "ISD greedy (sort-isd, 4 slots ahead)", "isd", {"strategy": "isd"}),
            Setting("bd", "sort-bd threshold 0.9, blocks of 4 (no cache)", "bd",
                    {"strategy": "threshold", "threshold": TAU, "block_size": 4}),
            Setting("bd+exact", "sort-bd threshold 0.9, blocks of 4 + exact cache", "bd",
                    {"strategy": "threshold", "threshold": TAU, "block_size": 4, "cache": "exact"}),
            Setting("bd+d2f", "sort-bd d2f pipeline (tau_conf 0.9, add 0.1, act 0.95)", "bd", {"strategy": "d2f"}),
            diffusion("vanilla", "low_confidence, 1 token/step (vanilla)", strategy="low_confidence"),
            diffusion("vanilla+ec", "low_confidence + early commit", strategy="low_confidence", early_commit=True),
            diffusion("threshold", f"threshold {TAU}", **th)]
    rows += [diffusion(f"threshold+{c}", f"threshold {TAU} + {c} cache", cache=c, **th)
             for c in ("prefix", "dual", "delayed")]
    rows += [diffusion("factor", f"factor {FACTOR}", strategy="factor", factor=FACTOR),
             diffusion("factor+dual", f"factor {FACTOR} + dual cache", strategy="factor", factor=FACTOR, cache="dual"),
             diffusion("threshold+dual+ec", f"threshold {TAU} + dual cache + early commit", cache="dual",
                       early_commit=True, **th)]
    if not quick:
        rows += [diffusion(f"threshold-{m}+dual", f"threshold {TAU} ({m}) + dual cache", cache="dual",
                           confidence=m, **th) for m in ("margin", "entropy")]
    # Lower thresholds commit more per step and start to err; the AR verifier is meant to catch that.
    for tau in AGGRESSIVE:
        rows.append(diffusion(f"threshold{tau}+dual", f"threshold {tau} + dual cache", strategy="threshold",
                              threshold=tau, cache="dual"))
        if verifier_available():
            rows.append(diffusion(f"verifier{tau}+dual", f"verifier ({VERIFIER}, accept {ACCEPT}) at threshold {tau} "
                                  f"+ dual cache", strategy="verifier", threshold=tau, verifier=VERIFIER,
                                  accept=ACCEPT, cache="dual"))
    return rows


def verifier_available() -> bool:
    from unmask.models.checkpoints import bundled_models

    return any(m.name == VERIFIER for m in bundled_models())
