"""Cached execution: the BlockCache a model consults at every block of every step."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bac_ros.bac.interface import BlockInfo
from bac_ros.bac.schedule import CacheSchedule


class ScheduleSteps:
    """The chunk bookkeeping every executor of a static schedule shares (the BlockCache
    protocol's ``reset`` / ``set_step`` / ``computed_count``): the compute table (a plain
    list of lists: a Python list index is far cheaper than a tensor index in the hot loop),
    the current step and the blocks computed so far this chunk."""

    def __init__(self, table: list[list[bool]]):
        self._table = table
        self._row_counts = [sum(row) for row in table]
        self._step = -1
        self._computed = 0

    @staticmethod
    def check_blocks(schedule: CacheSchedule, blocks: Sequence[BlockInfo]) -> None:
        if [b.name for b in blocks] != schedule.block_names:
            raise ValueError("schedule blocks do not match the model's blocks; use "
                             "CacheSchedule.check_compatible first.")

    @property
    def num_steps(self) -> int:
        return len(self._table)

    @property
    def computed_count(self) -> int:
        return self._computed

    def reset(self) -> None:
        self._step = -1
        self._computed = 0

    def set_step(self, step_index: int) -> None:
        if not 0 <= step_index < len(self._table):
            raise IndexError(f"step {step_index} outside the schedule's K={len(self._table)} "
                             "steps; the policy's step count must match the schedule.")
        self._step = step_index
        self._computed += self._row_counts[step_index]


class ScheduledBlockCache(ScheduleSteps):
    """Implements ``bac.interface.BlockCache`` for a static schedule.

    Eagerly, ``store`` keeps a reference to the
    block's output (a fresh tensor nothing writes to again: a copy would cost 24 copies per
    computed step). With ``static_buffers`` the outputs are copied into buffers allocated
    once per shape, so addresses stay fixed across chunks (what CUDA graph capture needs).
    """

    def __init__(self, schedule: CacheSchedule, blocks: Sequence[BlockInfo],
                 static_buffers: bool = False):
        self.check_blocks(schedule, blocks)
        super().__init__(schedule.table())
        self.schedule = schedule
        self.static_buffers = static_buffers
        self._row: list[bool] = self._table[0]
        self._blocks_of = {kind: [b.index for b in blocks if b.kind == kind]
                           for kind in {b.kind for b in blocks}}
        # Per step: does any block of each kind compute?
        self._kind_rows = [{kind: any(row[i] for i in idx) for kind, idx in
                            self._blocks_of.items()} for row in self._table]
        self._buffers: list[torch.Tensor | None] = [None] * len(blocks)
        self._stored = [False] * len(blocks)
        self._total: torch.Tensor | None = None  # sum of every buffer, while none changes

    @property
    def reused_count(self) -> int:
        return (self._step + 1) * len(self._buffers) - self._computed

    def reset(self) -> None:
        super().reset()
        self._total = None
        self._stored = [False] * len(self._buffers)

    def set_step(self, step_index: int) -> None:
        super().set_step(step_index)
        self._row = self._table[step_index]

    def computes_kind(self, kind) -> bool:
        """Whether any block of ``kind`` computes at the current step (the model may skip
        inputs only those blocks read)."""
        idx = self._blocks_of.get(kind)
        if not idx:
            return False
        return self._kind_rows[self._step][kind] or not all(self._stored[i] for i in idx)

    def should_compute(self, block_index: int) -> bool:
        # A block never stored this chunk must compute (guards a misuse, costs one lookup).
        return self._row[block_index] or not self._stored[block_index]

    def store(self, block_index: int, delta: torch.Tensor) -> None:
        self._stored[block_index] = True
        self._total = None
        if not self.static_buffers:
            self._buffers[block_index] = delta
            return
        buf = self._buffers[block_index]
        if buf is None or buf.shape != delta.shape or buf.dtype != delta.dtype \
                or buf.device != delta.device:
            buf = self._buffers[block_index] = torch.empty_like(delta)
        buf.copy_(delta)

    def reused_total(self) -> torch.Tensor | None:
        """On a step where no block computes (and every block holds an output), the sum of
        all cached outputs: the model adds it to its input once instead of block by block
        (equal up to float rounding of the summation order; most steps of a Uniform
        schedule are such steps). None on any other step."""
        if self._row_counts[self._step] or not all(self._stored):
            return None
        if self._total is None:
            total = self._buffers[0].clone()
            for buf in self._buffers[1:]:
                total += buf
            self._total = total
        return self._total

    def load(self, block_index: int) -> torch.Tensor:
        return self._buffers[block_index]
