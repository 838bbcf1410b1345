"""One per-request state machine per decoder; `build_row` picks it from a resolved `Decoding`."""
from __future__ import annotations

import torch

from unmask.decode.registry import make_strategy
from unmask.decode.rows.autoregressive import ARRow
from unmask.decode.rows.base import MAIN, Progress, Row, Work
from unmask.decode.rows.aligned import AlignedBlockRow
from unmask.decode.rows.blocks import BlockRow
from unmask.decode.rows.flow import FlowRow
from unmask.decode.rows.pipeline import PipelineRow
from unmask.decode.rows.strided import StridedRow
from unmask.decode.spec import BLOCK_RULES, FAMILY_RULES, Decoding

__all__ = ["MAIN", "Progress", "Row", "Work", "build_row"]


def build_row(model: torch.nn.Module, prompt: torch.Tensor, d: Decoding, generator: torch.Generator | None) -> Row:
    """The row for one request: prompt `# (P,)` on the model's device."""
    if d.strategy == "ar":
        return ARRow(model, prompt, d, generator)
    if d.strategy == "isd":
        return StridedRow(model, prompt, d, generator)
    if d.strategy == "flow":
        return FlowRow(model, prompt, d, generator)
    if d.strategy == "d2f":
        return PipelineRow(model, prompt, d, generator)
    if d.strategy in FAMILY_RULES:
        return AlignedBlockRow(model, prompt, d, make_strategy(d.strategy, **d.rule_options()), generator)
    assert d.strategy in BLOCK_RULES, d.strategy
    return BlockRow(model, prompt, d, make_strategy(d.strategy, **d.rule_options()), generator)
