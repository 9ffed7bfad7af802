"""Soak test: loop a Push-T bag (camera 30 Hz, joint states 100 Hz) through the node.

Records RSS, latency p99 per window, and counts of chunks and errors. Pass = no inference or
control-tick errors, RSS growth < 5 % after warm-up, p99 stable (worst window < 2x the
median window, first window excluded as warm-up). The 60-second version runs in CI
(test/node/test_soak.py); the 30-minute one by hand:

    bac soak --duration-s 1800 --checkpoint P --schedule S --out report.json
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from bac_ros.node.replay import LiveNode, read_bag


def run_soak(checkpoint: str, schedule: str, duration_s: float, window_s: float = 60.0,
             warmup_s: float = 10.0, bag: str | Path | None = None, params: dict | None = None,
             progress: bool = False) -> dict:
    from tqdm import tqdm

    from bac_ros.pusht.bag import record_bag

    with tempfile.TemporaryDirectory() as tmp:
        if bag is None:
            bag = record_bag(Path(tmp) / "soak_bag", duration_s=10.0, camera_hz=30.0,
                             joint_hz=100.0, seed=3)
        messages = read_bag(bag)
        proc = psutil.Process(os.getpid())
        rss = []  # (t_s, rss_bytes), once a second
        lat = []  # (t_s, total_ms) of every published chunk's latency message
        counts = {"chunks": 0, "commands": 0}
        stop = threading.Event()
        with LiveNode({"checkpoint": checkpoint, "schedule": schedule, **(params or {})}) as live:
            t0 = time.monotonic()

            def sample():
                # Drain the probe every second: it keeps only counts and latencies, so the
                # RSS measured is the node's, not a growing list of received messages.
                got = live.probe.drain()
                t = time.monotonic() - t0
                counts["chunks"] += len(got.chunks)
                counts["commands"] += len(got.commands)
                lat.extend((t, m.total_ms) for m in got.latencies if not m.warning)
                rss.append((t, proc.memory_info().rss))

            def sampler():
                while not stop.wait(1.0):
                    sample()

            th = threading.Thread(target=sampler, daemon=True)
            th.start()
            loops = 0
            bar = tqdm(total=int(duration_s), unit="s", desc="soak", disable=not progress)
            while time.monotonic() - t0 < duration_s:
                live.probe.replay(messages, stop=stop)
                loops += 1
                bar.n = min(int(time.monotonic() - t0), int(duration_s))
                bar.set_postfix(chunks=counts["chunks"],
                                errors=live.node.counters["inference_errors"])
            bar.close()
            stop.set()
            th.join()
            sample()
            counters = dict(live.node.counters)
    return soak_report(rss, lat, counts, counters, duration_s, window_s, warmup_s,
                       time.monotonic() - t0, loops)


def soak_report(rss, lat, counts, counters, duration_s, window_s, warmup_s, elapsed_s,
                loops) -> dict:
    t_rss = np.array([t for t, _ in rss])
    mem = np.array([b for _, b in rss], dtype=np.float64)
    after = mem[t_rss >= warmup_s] if (t_rss >= warmup_s).any() else mem
    windows = []
    for w in range(int(np.ceil(duration_s / window_s))):
        lo, hi = w * window_s, (w + 1) * window_s
        ms = [v for t, v in lat if lo <= t < hi]
        in_w = mem[(t_rss >= lo) & (t_rss < hi)]
        windows.append({"window": w, "chunks": len(ms),
                        "p99_ms": float(np.percentile(ms, 99)) if ms else None,
                        "rss_mb": round(float(in_w[-1]) / 2**20, 1) if in_w.size else None})
    growth = float((after[-1] - after[0]) / after[0]) if len(after) >= 2 else 0.0
    # "p99 stable": the worst window's p99 against the median window's, after warm-up
    p99s = [w["p99_ms"] for w in windows[1:] if w["p99_ms"] is not None] or \
        [w["p99_ms"] for w in windows if w["p99_ms"] is not None]
    p99_ratio = float(max(p99s) / np.median(p99s)) if p99s else float("nan")
    errors = counters.get("inference_errors", 0) + counters.get("control_tick_errors", 0)
    ok = [v for _, v in lat]
    return {
        "pass": bool(errors == 0 and growth < 0.05 and p99_ratio < 2.0),
        "p99_max_over_median": round(p99_ratio, 3),
        "duration_s": round(elapsed_s, 1), "bag_loops": loops,
        "chunks": counts["chunks"], "commands": counts["commands"],
        "inference_errors": counters.get("inference_errors", 0),
        "control_tick_errors": counters.get("control_tick_errors", 0),
        "rejected_inputs": counters.get("rejected_inputs", 0),
        "stale_skips": counters.get("stale_skips", 0),
        "deadline_misses": counters.get("deadline_misses", 0),
        "rss_mb_after_warmup_start": round(float(after[0]) / 2**20, 1) if len(after) else None,
        "rss_mb_end": round(float(after[-1]) / 2**20, 1) if len(after) else None,
        "rss_growth_frac": round(growth, 4),
        "latency_ms_p50": float(np.percentile(ok, 50)) if ok else None,
        "latency_ms_p99": float(np.percentile(ok, 99)) if ok else None,
        "windows": windows,
    }


def main(argv=None) -> int:
    """``python -m bac_ros.node.soak`` == ``bac soak``."""
    from bac_ros.cli.main import main as bac_main

    return bac_main(["soak", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())
