"""BUA, the Bubbling Union Algorithm (BAC_NOTES.md, "BUA").

Caching error of upstream blocks surges through downstream FFNs. For each of the
top-n blocks by caching error err_b, union its update set with the FFN update
sets of its own and every deeper layer, so stale inputs are refreshed whenever
a downstream FFN recomputes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bac_ros.bac.interface import BlockInfo, BlockKind


def bubbling_union(
    blocks: Sequence[BlockInfo],
    update_steps: Sequence[Sequence[int]],
    caching_error: np.ndarray,
    top_n: int,
    min_selected: int = 2,
) -> tuple[list[list[int]], list[int]]:
    """Return (new update sets, indices of the selected blocks).

    ``min_selected``: BUA is skipped when fewer blocks would be selected (the
    authors skip it for n < 2).
    """
    if len(blocks) != len(update_steps) or len(blocks) != len(caching_error):
        raise ValueError("blocks, update_steps and caching_error must have the same length.")
    if top_n < 0:
        raise ValueError(f"BUA top_n must be >= 0. Got {top_n}.")
    sets = [sorted(set(s)) for s in update_steps]
    n = min(top_n, len(blocks))
    if n < min_selected:
        return sets, []
    # Stable order: highest error first, ties by execution order.
    selected = sorted(np.argsort(-np.asarray(caching_error), kind="stable")[:n].tolist())
    ffn_sets = {b.layer: set(update_steps[b.index]) for b in blocks if b.kind is BlockKind.FFN}
    for u in selected:
        layer = blocks[u].layer
        extra = set().union(*[s for lyr, s in ffn_sets.items() if lyr >= layer])
        sets[u] = sorted(set(sets[u]) | extra)
    return sets, selected
