"""Observation history with approximate time sync across cameras and joint states (no ROS).

Each source (a camera, the joint states) keeps (stamp_s, value) samples covering the last
``history_s`` seconds, at most one per ``min_spacing_s``: a sample closer than that to the
newest kept one is decimated (dropped before it is converted), so a 2-5 kHz joint-state
driver neither pushes the samples the history needs out of a fixed-size ring nor spends the
executor's time on conversions nobody reads. The newest complete observation is anchored
at the newest sample of the anchor source (the first camera, or the joint states for
low-dim policies); frame i of the n_obs_steps history is the sample of every source nearest
to ``anchor - (To-1-i) * period``, each within ``tolerance_s``.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from bac_ros.node.conversions import InputError


@dataclass
class ObservationHistory:
    obs: dict[str, np.ndarray]  # key -> (1, To, *shape) float32
    stamp_s: float  # capture time of the newest frame (anchor)
    received_s: float  # monotonic receipt time of the newest sample used


class _Source:
    def __init__(self, maxlen: int):
        self.stamps: deque[float] = deque(maxlen=maxlen)
        self.values: deque[dict[str, np.ndarray]] = deque(maxlen=maxlen)
        self.received: deque[float] = deque(maxlen=maxlen)
        self.last_seen = float("-inf")  # newest stamp received, kept or decimated

    def trim(self, older_than_s: float) -> None:
        while self.stamps and self.stamps[0] < older_than_s:
            self.stamps.popleft()
            self.values.popleft()
            self.received.popleft()

    def nearest(self, t: float) -> int | None:
        if not self.stamps:
            return None
        stamps = list(self.stamps)
        i = bisect.bisect_left(stamps, t)
        cands = [j for j in (i - 1, i) if 0 <= j < len(stamps)]
        return min(cands, key=lambda j: abs(stamps[j] - t))


class ObservationBuffer:
    """Thread-safe: subscriptions add samples, the inference worker reads histories."""

    def __init__(self, sources: list[str], n_obs_steps: int, period_s: float,
                 tolerance_s: float, history_s: float = 2.0, max_future_s: float = 0.05,
                 min_spacing_s: float = 0.002):
        if not sources:
            raise ValueError("ObservationBuffer needs at least one source.")
        self.sources = list(sources)
        self.n_obs_steps, self.period_s, self.tolerance_s = n_obs_steps, period_s, tolerance_s
        self.max_future_s = max_future_s
        # The history must span the frames plus a second of lag between sources.
        self.history_s = max(history_s, (n_obs_steps - 1) * period_s + 1.0)
        self.min_spacing_s = min_spacing_s
        # Time trimming bounds the count; maxlen is a backstop for nonsense stamps.
        maxlen = int(self.history_s / max(min_spacing_s, 1e-4)) + 2
        self._src = {s: _Source(maxlen) for s in self.sources}
        self._lock = threading.Lock()

    def decimated(self, source: str, stamp_s: float) -> bool:
        """True (and recorded as seen) when a sample at ``stamp_s`` is newer than everything
        received but less than ``min_spacing_s`` after the newest kept one: the caller drops
        it without converting it. Duplicates and out-of-order stamps return False, so
        ``add`` reports them."""
        with self._lock:
            src = self._src[source]
            if src.stamps and src.last_seen < stamp_s < src.stamps[-1] + self.min_spacing_s:
                src.last_seen = stamp_s
                return True
            return False

    def add(self, source: str, stamp_s: float, values: dict[str, np.ndarray], now_s: float,
            received_s: float) -> bool:
        """Add a sample; raise InputError for zero, future, duplicate or out-of-order stamps.
        Returns False when the sample was decimated (see ``decimated``)."""
        if stamp_s <= 0.0:
            raise InputError("bad_stamp", f"{source}: header stamp is zero; the driver must "
                             "stamp messages with their capture time")
        if stamp_s > now_s + self.max_future_s:
            raise InputError("future_stamp", f"{source}: stamp is {stamp_s - now_s:.3f} s in "
                             "the future (clock skew between machines? use chrony/PTP)")
        with self._lock:
            src = self._src[source]
            if stamp_s == src.last_seen:
                raise InputError("duplicate", f"{source}: duplicate message (stamp {stamp_s:.6f})")
            if stamp_s < src.last_seen:
                raise InputError("out_of_order", f"{source}: out-of-order stamp "
                                 f"{stamp_s:.6f} < newest {src.last_seen:.6f}; dropped")
            src.last_seen = stamp_s
            if src.stamps and stamp_s < src.stamps[-1] + self.min_spacing_s:
                return False
            src.stamps.append(stamp_s)
            src.values.append(values)
            src.received.append(received_s)
            src.trim(stamp_s - self.history_s)
            return True

    def clear(self) -> None:
        with self._lock:
            for s in self._src.values():
                s.last_seen = float("-inf")
                s.stamps.clear()
                s.values.clear()
                s.received.clear()

    def newest_stamp(self, source: str) -> float | None:
        with self._lock:
            st = self._src[source].stamps
            return st[-1] if st else None

    def sample_period_s(self, source: str, n: int = 8) -> float | None:
        """Median spacing of ``source``'s last ``n`` kept samples (None with fewer than 3)."""
        with self._lock:
            st = list(self._src[source].stamps)[-n:]
        if len(st) < 3:
            return None
        return float(np.median(np.diff(st)))

    def latest(self) -> ObservationHistory | None:
        """The newest complete history, or None (a source has no matching samples yet)."""
        with self._lock:
            anchor_src = self._src[self.sources[0]]
            # Try anchors from newest back: other sources may lag by a few ms.
            for a in range(len(anchor_src.stamps) - 1, max(-1, len(anchor_src.stamps) - 6), -1):
                hist = self._history_at(anchor_src.stamps[a])
                if hist is not None:
                    return hist
        return None

    def _history_at(self, anchor: float) -> ObservationHistory | None:
        To = self.n_obs_steps
        frames: list[dict[str, np.ndarray]] = [{} for _ in range(To)]
        received = 0.0
        for i in range(To):
            t = anchor - (To - 1 - i) * self.period_s
            for src in self._src.values():
                j = src.nearest(t)
                if j is None or abs(src.stamps[j] - t) > self.tolerance_s:
                    return None
                frames[i].update(src.values[j])
                received = max(received, src.received[j])
        keys = frames[0].keys()
        obs = {k: np.stack([f[k] for f in frames])[None].astype(np.float32) for k in keys}
        return ObservationHistory(obs=obs, stamp_s=anchor, received_s=received)
