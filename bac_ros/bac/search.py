"""Output-targeted schedule search: minimise the final action error under a FLOPs budget.

ACS (and BAC's BUA) maximise per-block feature similarity; what a robot executes is the
final action. This method ("search", not part of the paper) scores candidate schedules by the
executed actions they produce, compared with full compute on the same calibration
observations and the same noise, and improves a starting schedule by local search:

- the budget is FLOPs, not updates: a schedule may spend at most what Uniform S spends
  (``S * sum of block FLOPs`` per chunk), so it is compared with Uniform at equal compute;
- start: the best (lowest error) of Uniform S and shared ACS S, both within the budget;
- moves, coarse to fine: shift one update step of a group of blocks (all blocks, then each
  block kind, then each layer) by +-1..8 steps; move one update from one kind to another
  when the FLOPs budget allows; a move is kept only if it lowers the calibration error.

So it never exceeds its budget and never ends worse than its start *on its calibration set*
(both are tested). Whether it helps a robot is decided in closed loop (``bac eval``), not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from bac_ros.bac.cache import ScheduledBlockCache
from bac_ros.bac.interface import BlockInfo, BlockKind
from bac_ros.bac.schedule import CacheSchedule


@dataclass
class SearchConfig:
    budget: int = 20  # FLOPs budget = Uniform S's
    max_evals: int = 300  # candidate schedules scored (each is one batched cached denoise)
    shifts: tuple = (8, 4, 2, 1)
    seed: int = 0  # DDPM step-noise seed shared by every candidate

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ValueError(f"`budget` must be >= 1. Got {self.budget}.")
        if self.max_evals < 1:
            raise ValueError(f"`max_evals` must be >= 1. Got {self.max_evals}.")


class ActionErrorObjective:
    """Mean |executed action - full-compute action| (normalized units) on fixed samples.

    ``cond`` (B, To, cond_dim) and ``noise`` (B, horizon, Da) are fixed; the DDPM step noise
    is re-seeded for every call, so every schedule is scored under identical randomness.
    """

    def __init__(self, policy, cond: torch.Tensor, noise: torch.Tensor, seed: int = 0):
        self.policy, self.cond, self.noise, self.seed = policy, cond, noise, seed
        To, Na = policy.config.n_obs_steps, policy.config.n_action_steps
        self.slice = slice(To - 1, To - 1 + Na)
        self.blocks = policy.model.blocks()
        self.reference = self._run(None)
        self.evals = 0

    def _run(self, cache) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        out = self.policy.denoise(self.cond, self.noise, cache=cache, generator=gen)
        return out[:, self.slice]

    def __call__(self, schedule: CacheSchedule) -> float:
        self.evals += 1
        out = self._run(ScheduledBlockCache(schedule, self.blocks))
        return float((out - self.reference).abs().mean())


def schedule_cost(update_steps: Sequence[Sequence[int]], per_block_flops: Sequence[int]) -> int:
    """Block FLOPs per chunk (the always-computed parts are the same for every schedule)."""
    return int(sum(f * len(s) for f, s in zip(per_block_flops, update_steps)))


def budget_flops(budget: int, per_block_flops: Sequence[int]) -> int:
    return int(budget * sum(per_block_flops))


def _groups(blocks: Sequence[BlockInfo]) -> list[list[int]]:
    every = [list(range(len(blocks)))]
    kinds = [[b.index for b in blocks if b.kind == k] for k in BlockKind]
    layers = sorted({b.layer for b in blocks})
    per_layer = [[b.index for b in blocks if b.layer == layer] for layer in layers]
    return [g for g in every + kinds + per_layer if g]


def _shift(sets: list[list[int]], group: list[int], old: int, new: int, K: int):
    """Replace step ``old`` by ``new`` in every block of ``group`` that has old and not new."""
    if not 0 < new < K:
        return None
    out, changed = [list(s) for s in sets], False
    for b in group:
        if old in out[b] and new not in out[b]:
            out[b] = sorted([s for s in out[b] if s != old] + [new])
            changed = True
    return out if changed else None


def _transfer(sets, src: list[int], dst: list[int], old: int, new: int, K: int):
    """Drop ``old`` from every block of ``src``, add ``new`` to every block of ``dst``."""
    if not 0 < new < K:
        return None
    out = [list(s) for s in sets]
    if not all(old in out[b] for b in src) or any(new in out[b] for b in dst):
        return None
    for b in src:
        out[b].remove(old)
    for b in dst:
        out[b] = sorted(out[b] + [new])
    return out


def _key(sets) -> tuple:
    return tuple(tuple(s) for s in sets)


def search_schedule(start: CacheSchedule, blocks: Sequence[BlockInfo], objective,
                    per_block_flops: Sequence[int], cfg: SearchConfig,
                    progress: bool = True) -> tuple[CacheSchedule, dict]:
    """Hill-climb from ``start`` (which must be within the budget). Returns (schedule, log)."""
    K = start.num_steps
    limit = budget_flops(cfg.budget, per_block_flops)
    if schedule_cost(start.update_steps, per_block_flops) > limit:
        raise ValueError("the starting schedule exceeds the FLOPs budget.")

    def make(sets):
        return CacheSchedule(fingerprint=start.fingerprint, scheduler_type=start.scheduler_type,
                             num_steps=K, block_names=list(start.block_names),
                             update_steps=sets, method="search", budget=cfg.budget,
                             calibration=dict(start.calibration))

    best_sets = [list(s) for s in start.update_steps]
    best_err = start_err = objective(make(best_sets))
    history = [start_err]
    kinds = [[b.index for b in blocks if b.kind == k] for k in BlockKind]
    kinds = [g for g in kinds if g]
    bar = tqdm(total=cfg.max_evals, desc="schedule search", disable=not progress)
    evals = 1

    def candidates(sets):
        for group in _groups(blocks):
            steps = sorted(set().union(*(sets[b] for b in group)) - {0})
            for d in cfg.shifts:
                for s in steps:
                    for new in (s - d, s + d):
                        yield _shift(sets, group, s, new, K)
        for src in kinds:
            for dst in kinds:
                if src is dst:
                    continue
                common = sorted(set.intersection(*(set(sets[b]) for b in src)) - {0})
                for old in common:
                    for d in (0, *cfg.shifts, *(-x for x in cfg.shifts)):
                        yield _transfer(sets, src, dst, old, old + d, K)

    seen = {_key(best_sets)}  # the best error only falls: a rejected candidate stays rejected
    improved = True
    while improved and evals < cfg.max_evals:
        improved = False
        for cand in candidates(best_sets):
            if evals >= cfg.max_evals:
                break
            if cand is None or schedule_cost(cand, per_block_flops) > limit or \
                    _key(cand) in seen:
                continue
            seen.add(_key(cand))
            err = objective(make(cand))
            evals += 1
            bar.update(1)
            if err < best_err - 1e-9:
                best_sets, best_err, improved = cand, err, True
                history.append(err)
                bar.set_postfix(err=f"{best_err:.4f}")
                break  # restart the move list from the coarsest level
    bar.close()
    log = {"start_method": start.method, "start_error": start_err, "final_error": best_err,
           "evaluations": evals, "improvements": len(history) - 1,
           "budget_flops": limit, "cost_flops": schedule_cost(best_sets, per_block_flops)}
    return make(best_sets), log


def objective_from_observations(policy, observations, seeds: Sequence[int],
                                seed: int = 0) -> ActionErrorObjective:
    """Batch every (observation, noise seed) pair into one objective."""
    conds, noises = [], []
    for obs in observations:
        c = policy.encode_condition(obs)
        for s in seeds:
            conds.append(c)
            noises.append(policy.make_noise(c.shape[0], torch.Generator().manual_seed(1000 + s)))
    return ActionErrorObjective(policy, torch.cat(conds), torch.cat(noises), seed)


def search_from_baselines(budget: int, build_kwargs: dict, objective, max_evals: int,
                          progress: bool = True) -> tuple[CacheSchedule, dict]:
    """The ``search`` method end to end: start from the better (by ``objective``) of Uniform S
    and shared ACS S, hill-climb within Uniform S's FLOPs, and set the FLOPs ratio.

    ``build_kwargs`` are ``baselines.build_schedule``'s keyword arguments except method and
    budget (blocks, K, fingerprint, scheduler_type, similarity, flops, ...)."""
    from bac_ros.bac.baselines import build_schedule, flops_ratio

    starts = [build_schedule(m, budget=budget, **{**build_kwargs, "force_last_step": False})
              for m in ("uniform", "shared_acs")]
    start = min(starts, key=objective)
    per_block, fixed = build_kwargs["flops"]
    sched, log = search_schedule(start, build_kwargs["blocks"], objective, per_block,
                                 SearchConfig(budget=budget, max_evals=max_evals),
                                 progress=progress)
    sched.flops_ratio = round(flops_ratio(sched, per_block, fixed), 4)
    return sched, log
