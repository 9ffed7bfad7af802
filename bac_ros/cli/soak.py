"""`bac soak`: loop a Push-T bag through the real policy node for a long time and report
memory, latency stability and error counts (docs/reliability.md)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "soak", help="long-running replay through the node: RSS, p99 per window, errors",
        description="Record a 10 s Push-T expert bag (camera 30 Hz, joint states 100 Hz), loop "
                    "it through the policy node for --duration-s and report RSS growth after "
                    "warm-up, latency p99 per window, chunk / command / error counts. Exit code "
                    "0 = pass (no inference or control-tick errors, RSS growth < 5 %, worst "
                    "window p99 < 2x the median window).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="policy (default: the bundled one)")
    p.add_argument("--schedule", default=None,
                   help="BAC schedule (default: the bundled policy's; '' for none)")
    p.add_argument("--duration-s", type=float, default=1800.0)
    p.add_argument("--window-s", type=float, default=60.0, help="p99 window length")
    p.add_argument("--warmup-s", type=float, default=10.0, help="RSS baseline starts here")
    p.add_argument("--out", default="", help="also write the report as JSON to this file")
    p.add_argument("--json", action="store_true", help="print only the JSON report")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from bac_ros.cli.common import node_policy_files
    from bac_ros.io_utils import atomic_write_text
    from bac_ros.node.soak import run_soak

    if args.duration_s <= 0 or args.window_s <= 0:
        raise SystemExit("bac soak: --duration-s and --window-s must be > 0")
    ckpt, sched = node_policy_files(args.checkpoint, args.schedule)
    rep = run_soak(ckpt, sched, args.duration_s, args.window_s, warmup_s=args.warmup_s,
                   progress=not args.json)
    text = json.dumps(rep, indent=2)
    if args.out:
        atomic_write_text(args.out, text)
    print(text)
    return 0 if rep["pass"] else 1
