"""Renaming a published checkpoint's tensors to ours: a table for top-level names, one for per-layer ones."""
from __future__ import annotations

import re


def rename(name: str, top: dict[str, str], layer_pattern: str, layer_table: dict[str, str]) -> str:
    """Our name for `name`; unknown names come back unchanged, and the loader reports them as misplaced.

    layer_pattern: a regex whose groups are (layer index, module name, weight|bias).
    """
    if name in top:
        return top[name]
    m = re.fullmatch(layer_pattern, name)
    if m and m.group(2) in layer_table:
        return f"layers.{m.group(1)}.{layer_table[m.group(2)]}.{m.group(3)}"
    return name
