#!/usr/bin/env python3
"""Compiled full compute vs eager full compute, for inductor's CPU options (issue 15).

Each variant runs in its own process (inductor's options are process-wide): it compiles
full compute of the policy through ``bac.compiled.CompiledSchedule``, times eager and
compiled chunks side by side in that process, and checks the compiled chunk against the
eager one (same noise) so that a fast but wrong variant is seen as wrong. Prints a table and,
with --json, one JSON row per variant. Run it with nothing else on the machine.

    .venv/bin/python scripts/bench_compile_variants.py [--checkpoint P] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> (inductor freezing, torch.compile mode)
    "default": (False, None),
    "freezing": (True, None),
    "max-autotune": (False, "max-autotune-no-cudagraphs"),
    "freezing + max-autotune": (True, "max-autotune-no-cudagraphs"),
}


def child(args) -> None:
    import time

    import torch
    import torch._inductor.config as inductor_config

    from bac_ros.bac import compiled
    from bac_ros.engine.checkpoint import load_policy
    from bac_ros.engine.testing import random_obs

    torch.set_num_threads(args.threads)
    freezing, mode = VARIANTS[args.variant]
    inductor_config.freezing = freezing
    if mode is not None:  # CompiledSchedule passes no mode: wrap torch.compile for this run
        plain = torch.compile
        compiled.torch.compile = lambda fn, **kw: plain(fn, mode=mode, **kw)
    policy = load_policy(args.checkpoint)
    K = policy.num_inference_steps
    obs = random_obs(policy)

    @torch.no_grad()
    def chunk(runner):
        cond = policy.encode_condition(obs)
        noise = policy.make_noise(1, torch.Generator().manual_seed(0))
        return policy.denoise(cond, noise, cache=runner,
                              generator=torch.Generator().manual_seed(0))

    def median_ms(runner, n=args.repeats):
        chunk(runner)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            chunk(runner)
            times.append(1000 * (time.perf_counter() - t))
        return sorted(times)[n // 2]

    t = time.perf_counter()
    runner = compiled.CompiledSchedule(policy.model, None, K)
    out = chunk(runner)
    compile_s = time.perf_counter() - t
    ref = chunk(None)
    eager_ms, compiled_ms = median_ms(None), median_ms(runner)
    print(json.dumps({
        "variant": args.variant, "threads": args.threads, "K": K,
        "eager_full_ms": round(eager_ms, 1), "compiled_full_ms": round(compiled_ms, 1),
        "speedup_vs_eager": round(eager_ms / compiled_ms, 2), "compile_s": round(compile_s, 1),
        "max_abs_err_vs_eager": float((out - ref).abs().max()),
        "load_avg_1m": os.getloadavg()[0]}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "data/policies/pusht_image.safetensors"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.variant:
        child(args)
        return 0
    rows = []
    for name in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", name, "--checkpoint", args.checkpoint,
               "--threads", str(args.threads), "--repeats", str(args.repeats)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        line = [x for x in res.stdout.splitlines() if x.startswith('{"variant"')]
        if res.returncode or not line:
            print(f"{name}: failed (rc {res.returncode}): {res.stderr[-500:]}", file=sys.stderr)
            continue
        rows.append(json.loads(line[-1]))
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print("| variant | eager full ms | compiled full ms | speedup | compile s | max abs err "
          "vs eager | load |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ok = "" if r["max_abs_err_vs_eager"] < 1e-3 else " **WRONG**"
        print(f"| {r['variant']} | {r['eager_full_ms']} | {r['compiled_full_ms']} | "
              f"{r['speedup_vs_eager']}x | {r['compile_s']} | {r['max_abs_err_vs_eager']:.2g}{ok}"
              f" | {r['load_avg_1m']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
