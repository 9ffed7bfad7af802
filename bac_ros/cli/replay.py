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
    bag = args.bag or DEFAULT_BAG
    runs = {"bac" if sched else "full": run_replay(bag, params, topics, rate=args.rate)}
    if args.compare_full and sched:
        runs["full"] = run_replay(bag, {**params, "bac.enabled": False}, topics, rate=args.rate)
    report = {name: r.summary() for name, r in runs.items()}
    if "full" in report and "bac" in report and report["bac"]["denoise_ms_p50"]:
        report["denoise_speedup_bac_vs_full"] = (report["full"]["denoise_ms_p50"]
                                                 / report["bac"]["denoise_ms_p50"])
    no_chunks = [name for name, r in runs.items() if not r.chunks]
    if args.json:
        print_json(report)
        return 1 if no_chunks else 0
    for name, s in report.items():
        if not isinstance(s, dict):
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
