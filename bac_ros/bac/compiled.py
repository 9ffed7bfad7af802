"""Compiled execution of a static cache schedule: one graph per distinct compute mask.

A schedule fixes, before a chunk starts, which blocks compute at every step. Eagerly, each
step pays Python and per-op dispatch for every block and every small tensor op, which at
batch 1 on a CPU is most of the time (a block of the bundled policy is ~0.1 ms of math in
~0.3 ms of wall time). ``torch.compile`` (inductor) fuses a whole step into generated
code; since the mask is a constant of the step function (``forward_masked``), each distinct
mask becomes one graph, compiled once at warm-up, never on the control path. A Uniform
schedule has three (all blocks, none, and the first step's all-with-nothing-cached); full
compute has one; a BAC schedule may have dozens, more than ``max_graphs`` is refused.

The runner speaks the BlockCache protocol's chunk interface (``reset``, ``set_step``,
``computed_count``, from ``ScheduleSteps``) and adds ``run_model``, which ``DiffusionPolicy.denoise`` calls instead of
the model. CUDA graphs ("reduce-overhead") go through the same path on a GPU; not measured
here (no GPU was lent).
"""

from __future__ import annotations

import torch

from bac_ros.bac.cache import ScheduledBlockCache, ScheduleSteps
from bac_ros.bac.schedule import CacheSchedule


class CompiledSchedule(ScheduleSteps):
    """Runs ``model.forward_masked`` compiled, per the compute masks of ``schedule`` (None:
    full compute over ``num_steps`` steps)."""

    def __init__(self, model, schedule: CacheSchedule | None, num_steps: int | None = None,
                 backend: str = "inductor", max_graphs: int = 8, dynamic_batch: bool = False):
        n = len(model.blocks())
        if schedule is None:
            if not num_steps:
                raise ValueError("full compute needs num_steps")
            table = [[True] * n for _ in range(num_steps)]
        else:
            self.check_blocks(schedule, model.blocks())
            table = schedule.table()
        if not all(table[0]):
            raise ValueError("the first step must compute every block (nothing is cached yet)")
        super().__init__(table)
        self.schedule = schedule
        self._masks = [tuple(bool(v) for v in row) for row in table]
        self.distinct_masks = sorted(set(self._masks), key=self._masks.index)
        if len(self.distinct_masks) > max_graphs:
            raise ValueError(f"the schedule has {len(self.distinct_masks)} distinct compute "
                             f"masks, more than max_graphs={max_graphs} compiled graphs; run it "
                             "eagerly (compile=false) or raise max_graphs (each costs seconds "
                             "to compile)")
        self._max_graphs = max_graphs
        # dynamic_batch (a node serving several robots): dynamo's automatic dynamic shapes
        # turn the batch size symbolic once a second size is seen, so batch 1 plus one batched
        # graph per mask cover every batch size; else each size would compile its own.
        self._fn = torch.compile(model.forward_masked, backend=backend,
                                 dynamic=None if dynamic_batch else False, fullgraph=True)
        self._n = n
        self._cached: list[torch.Tensor | None] = [None] * n

    def reset(self) -> None:
        super().reset()
        self._cached = [None] * self._n

    def run_model(self, step_index: int, sample, timestep, cond) -> torch.Tensor:
        mask = self._masks[step_index]
        # The recompile limit is raised only around this call: every mask gets its own graph
        # (warm-up compiles them; afterwards no call compiles). Dynamo counts graphs per code
        # object, i.e. over every model and batch size in the process, hence the headroom.
        with torch._dynamo.config.patch(recompile_limit=64 + self._max_graphs):
            out, computed = self._fn(sample, timestep, cond, mask, self._cached)
        it = iter(computed)
        for b, m in enumerate(mask):
            if m:
                self._cached[b] = next(it)
        return out


def executor(model, schedule: CacheSchedule | None, num_steps: int, compiled: bool,
             dynamic_batch: bool = False, on_eager=None):
    """What runs a chunk of ``schedule`` (None: full compute): with ``compiled`` a
    CompiledSchedule, unless the schedule has too many distinct masks to be worth compiling
    (``on_eager(reason)`` hears why); else eagerly: a ScheduledBlockCache, or None for full
    compute (the model's plain forward)."""
    if compiled:
        try:
            return CompiledSchedule(model, schedule, num_steps, dynamic_batch=dynamic_batch)
        except ValueError as exc:
            if on_eager is not None:
                on_eager(str(exc))
    return None if schedule is None else ScheduledBlockCache(schedule, model.blocks())
