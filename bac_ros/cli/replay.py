"""`bac replay`: replay a rosbag2 file through the real policy node and report latency."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "replay", help="replay a bag through the policy node; print a latency report",
        description="Start the policy node in this process, publish the bag's camera and "
                    "joint-state messages on real topics at their recorded rate (header stamps as "
                    "recorded, shifted by one constant to now), and report what the node did: chunks, latency "
                    "p50/p95/p99, achieved rates. --compare-full runs it again without BAC.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("bag", nargs="?", default=None,
                   help="rosbag2 directory or .mcap (default: the bundled Push-T bag)")
    p.add_argument("--checkpoint", default=None, help="policy (default: the bundled one)")
    p.add_argument("--schedule", default=None,
                   help="BAC schedule (default: the bundled policy's; '' for none)")
    p.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                   help="bag topic -> node input topic, e.g. /cam/rgb:=/camera/image_raw")
    p.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="extra node parameter (YAML value), e.g. device:=cuda")
    p.add_argument("--rate", type=float, default=1.0, help="replay speed factor")
    p.add_argument("--compare-full", action="store_true", help="also replay with BAC off")
    p.add_argument("--robots", type=int, default=0, metavar="N",
                   help="serve N robots from one node (robots:=[r0, ...]), each fed the bag on "
                        "its own topics at the same time; the report has one entry per robot "
                        "and their mean (0: one robot on the plain topics)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import yaml

    from bac_ros.cli.common import DEFAULT_BAG, node_policy_files, parse_pairs, print_json
    from bac_ros.node.replay import run_replay

    params = {k: yaml.safe_load(v) for k, v in parse_pairs(args.param, "--param").items()}
    params["checkpoint"], sched = node_policy_files(args.checkpoint, args.schedule)
    params["schedule"] = sched
    topics = parse_pairs(args.remap, "--remap") or None
    if args.robots < 0 or args.robots > 64:
        raise SystemExit(f"bac replay: --robots must be in [0, 64], got {args.robots}")
    if args.robots:
        params["robots"] = [f"r{i}" for i in range(args.robots)]
    bag = args.bag or DEFAULT_BAG
    runs = {"bac" if sched else "full": run_replay(bag, params, topics, rate=args.rate)}
    if args.compare_full and sched:
        runs["full"] = run_replay(bag, {**params, "bac.enabled": False}, topics, rate=args.rate)
    report = {name: _summary(r) for name, r in runs.items()}
    if "full" in report and "bac" in report and report["bac"]["denoise_ms_p50"]:
        report["denoise_speedup_bac_vs_full"] = (report["full"]["denoise_ms_p50"]
                                                 / report["bac"]["denoise_ms_p50"])
    no_chunks = [f"{name}/{robot}" if robot else name for name, r in runs.items()
                 for robot, rr in (r.robots or {"": r}).items() if not rr.chunks]
    if args.json:
        print_json(report)
        return 1 if no_chunks else 0
    for name, s in report.items():
        if not isinstance(s, dict):
            continue
        if "robots" in s:
            print(f"[{name}] {len(s['robots'])} robots in one node, per robot (mean): "
                  f"{s['chunks']:.1f} chunks, command stream {s['command_rate_hz']:.1f} Hz, "
                  f"latency p50 {s['total_ms_p50']:.1f} ms, denoise p50 "
                  f"{s['denoise_ms_p50']:.1f} ms, robots per forward "
                  f"{s['batch_size_mean']:.2f}, held ticks {s['held_ticks_while_serving']:.1f}")
            continue
        print(f"[{name}] {s['chunks']} chunks in {s['duration_s']:.1f} s "
              f"({s['chunk_rate_hz']:.2f} Hz), command stream {s['command_rate_hz']:.1f} Hz; "
              f"latency obs->chunk p50 {s['total_ms_p50']:.1f} ms, p95 {s['total_ms_p95']:.1f},"
              f" p99 {s['total_ms_p99']:.1f}; preprocess (image stage) p50 "
              f"{s['preprocess_ms_p50']:.1f} ms; denoise p50 {s['denoise_ms_p50']:.1f} ms; "
              f"blocks computed {100 * s['blocks_computed_frac']:.0f}%; held ticks while "
              f"serving {s['held_ticks_while_serving']}")
        if s["rejections"]:
            print(f"    node rejections / skips: {s['rejections']}")
        if s["warnings"]:
            print("    node warnings (stale ones after the bag ends are expected: the node "
                  "refuses to act on old observations):")
        for w in s["warnings"]:
            print(f"      {w}")
    if "denoise_speedup_bac_vs_full" in report:
        print(f"BAC denoise speedup vs full (same run, same bag): "
              f"{report['denoise_speedup_bac_vs_full']:.2f}x")
    if no_chunks:
        import sys

        print(f"bac replay: the node produced no action chunk in {no_chunks} (wrong topics? "
              "see --remap, the warnings and rejections above)", file=sys.stderr)
        return 1
    return 0


def _summary(result) -> dict:
    """A run's summary; with several robots, the per-robot mean of every number plus each
    robot's own summary under "robots"."""
    if not result.robots:
        return result.summary()
    per = {name: r.summary() for name, r in result.robots.items()}
    keys = [k for k, v in next(iter(per.values())).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]
    mean = {k: sum(s[k] for s in per.values()) / len(per) for k in keys}
    return {**mean, "robots": per}
