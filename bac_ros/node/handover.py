"""Chunk hand-over for the control-rate command stream (no ROS).

Every chunk's actions are time-stamped: action j is due at ``t0 + j * dt``. At each
control tick the stream asks for the action due now:

- ``replace``: the newest chunk wins from its first not-yet-due action;
- ``temporal_ensemble``: ACT's exponentially weighted average over every chunk that
  has an action for this slot, w_i = exp(-m * i) with i = 0 the oldest chunk;
- ``blend``: linear cross-fade from the previous chunk to the new one over k ticks;
- ``rtc``: real-time chunking (Black et al. 2025): the new chunk is computed with the actions
  the stream will send while it is being computed fixed to the current ones (inpainting, see
  ``DiffusionPolicy.denoise``), so it continues them; played back as ``replace``.

Actions whose time has passed are never executed late: a tick maps to the slot
``round((now - t0) / dt)``; slots beyond a chunk's executed length are exhausted.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

MODES = ("replace", "temporal_ensemble", "blend", "rtc")


@dataclass
class Chunk:
    actions: np.ndarray  # (n_execute, Da)
    t0_s: float  # time actions[0] is due
    dt_s: float
    chunk_id: int
    arrived_s: float

    def slot(self, now_s: float) -> int:
        return int(math.floor((now_s - self.t0_s) / self.dt_s + 0.5))

    @property
    def end_s(self) -> float:
        """Time after which the chunk has no action left."""
        return self.t0_s + (len(self.actions) - 0.5) * self.dt_s


class ActionScheduler:
    def __init__(self, mode: str = "replace", ensemble_decay: float = 0.01,
                 blend_steps: int = 3, max_chunks: int = 8):
        self.configure(mode, ensemble_decay, blend_steps)
        self._chunks: deque[Chunk] = deque(maxlen=max_chunks)
        self._lock = threading.Lock()

    def configure(self, mode: str, ensemble_decay: float, blend_steps: int) -> None:
        if mode not in MODES:
            raise ValueError(f"handover mode must be one of {MODES}. Got {mode!r}.")
        self.mode, self.ensemble_decay, self.blend_steps = mode, ensemble_decay, blend_steps

    def add(self, chunk: Chunk) -> None:
        with self._lock:
            self._chunks.append(chunk)

    def clear(self) -> None:
        with self._lock:
            self._chunks.clear()

    def remaining(self, now_s: float) -> int:
        """Actions of the newest chunk not yet due (0 when there is no chunk)."""
        with self._lock:
            if not self._chunks:
                return 0
            c = self._chunks[-1]
            return max(0, len(c.actions) - max(0, c.slot(now_s)))

    def time_left_s(self, now_s: float) -> float:
        """Seconds until the newest chunk has no action left (0 without a chunk)."""
        end = self.exhausted_at()
        return 0.0 if end is None else max(0.0, end - now_s)

    def exhausted_at(self) -> float | None:
        with self._lock:
            return self._chunks[-1].end_s if self._chunks else None

    def planned(self, t0_s: float, dt_s: float, n: int, until_s: float
                ) -> tuple[np.ndarray, np.ndarray] | None:
        """What the stream will send at t0 + j*dt for the n slots (RTC's frozen prefix): (n, Da)
        actions and an (n,) mask, True where a slot is due before ``until_s`` and an action is
        planned for it; None without a chunk."""
        acts, mask = None, np.zeros(n, bool)
        for j in range(n):
            t = t0_s + j * dt_s
            if t > until_s:
                break
            due = self.action_at(t)
            if due is None:
                continue
            if acts is None:
                acts = np.zeros((n, len(due[0])), np.float32)
            acts[j], mask[j] = due[0], True
        return None if acts is None else (acts, mask)

    def action_at(self, now_s: float) -> tuple[np.ndarray, int] | None:
        """(action due now, chunk id it mainly comes from), or None: hold."""
        with self._lock:
            live = [(c, c.slot(now_s)) for c in self._chunks]
            live = [(c, j) for c, j in live if 0 <= j < len(c.actions)]
            if not live:
                return None
            newest, j = live[-1]
            if self.mode in ("replace", "rtc") or len(live) == 1:
                return newest.actions[j], newest.chunk_id
            if self.mode == "temporal_ensemble":
                w = np.exp(-self.ensemble_decay * np.arange(len(live)))
                acts = np.stack([c.actions[k] for c, k in live])
                w = w.reshape((-1,) + (1,) * (acts.ndim - 1))  # any action shape
                return (w * acts).sum(0) / w.sum(), newest.chunk_id
            # blend: cross-fade from the previous chunk over blend_steps ticks after arrival
            prev, pj = live[-2]
            first = max(0, newest.slot(newest.arrived_s))  # first slot the new chunk serves
            alpha = min(1.0, (j - first + 1) / max(1, self.blend_steps))
            return (1 - alpha) * prev.actions[pj] + alpha * newest.actions[j], newest.chunk_id
