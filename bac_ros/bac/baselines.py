"""Schedule builders for BAC and the baselines it is compared with (same machinery)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bac_ros.bac.acs import acs_schedule
from bac_ros.bac.bua import bubbling_union
from bac_ros.bac.interface import BlockInfo
from bac_ros.bac.schedule import CacheSchedule


def uniform_steps(K: int, budget: int) -> list[int]:
    """S updates spread evenly (every ~K/S steps), starting at step 0."""
    if not 1 <= budget <= K:
        raise ValueError(f"budget S must be in [1, K={K}]. Got {budget}.")
    return sorted({int(round(i * K / budget)) for i in range(budget)})


def build_schedule(
    method: str,
    blocks: Sequence[BlockInfo],
    K: int,
    budget: int,
    fingerprint: str,
    scheduler_type: str,
    similarity: np.ndarray | None = None,  # (n_blocks, K, K)
    caching_error: np.ndarray | None = None,  # (n_blocks,)
    bua_top_n: int = 5,
    bua_min_selected: int = 2,
    force_last_step: bool = False,
    calibration: dict | None = None,
    flops: tuple[list[int], int] | None = None,
) -> CacheSchedule:
    """method: full | uniform | shared_acs | acs | bac."""
    n = len(blocks)
    selected: list[int] = []
    if method == "full":
        sets = [list(range(K))] * n
    elif method == "uniform":
        sets = [uniform_steps(K, budget)] * n
    elif method in ("shared_acs", "acs", "bac"):
        if similarity is None:
            raise ValueError(f"method {method!r} needs the calibration similarity matrices.")
        if method == "shared_acs":
            sets = [acs_schedule(similarity.mean(0), budget, force_last_step)] * n
        else:
            sets = [acs_schedule(similarity[b], budget, force_last_step) for b in range(n)]
        if method == "bac":
            if caching_error is None:
                raise ValueError("method 'bac' needs the per-block caching error.")
            sets, selected = bubbling_union(blocks, sets, caching_error, bua_top_n,
                                            min_selected=bua_min_selected)
    else:
        raise ValueError(f"unknown schedule method {method!r}; use full, uniform, shared_acs, "
                         "acs or bac.")
    sched = CacheSchedule(
        fingerprint=fingerprint, scheduler_type=scheduler_type, num_steps=K,
        block_names=[b.name for b in blocks], update_steps=[list(s) for s in sets],
        method=method, budget=None if method == "full" else budget,
        bua_top_n=bua_top_n if method == "bac" else 0,
        bua_selected=[blocks[i].name for i in selected],
        force_last_step=force_last_step and method in ("shared_acs", "acs", "bac"),
        calibration=dict(calibration or {}),
    )
    if flops is not None:
        sched.flops_ratio = round(flops_ratio(sched, *flops), 4)
    return sched


def chunk_flops(per_block: list[int], fixed: int, K: int,
                update_steps: list[list[int]] | None = None) -> int:
    """FLOPs of one chunk of K model calls: the always-computed parts every call, plus each
    block at its update steps (every step when ``update_steps`` is None: full compute)."""
    blocks = K * sum(per_block) if update_steps is None else \
        sum(f * len(s) for f, s in zip(per_block, update_steps))
    return K * fixed + blocks


def flops_ratio(schedule: CacheSchedule, per_block: list[int], fixed: int) -> float:
    """Full-compute FLOPs / scheduled FLOPs for one chunk."""
    K = schedule.num_steps
    return chunk_flops(per_block, fixed, K) / chunk_flops(per_block, fixed, K,
                                                          schedule.update_steps)
