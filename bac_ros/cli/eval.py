"""`bac eval`: closed-loop Push-T evaluation of full compute vs BAC and baselines."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="closed-loop Push-T success rate: full vs BAC vs baselines",
        description="Roll the policy out in gym-pusht on fixed test seeds, all episodes "
                    "batched into one forward per re-plan, identical initial noise for every "
                    "method. Writes results.md, results.png and rollout GIFs into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="policy (default: data/policies/pusht_lowdim.safetensors)")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--first-seed", type=int, default=900_000, help="first test seed")
    p.add_argument("--methods", nargs="+", default=None,
                   help="subset of method names (default: all seven)")
    p.add_argument("--ddim-only", type=int, default=0, metavar="K",
                   help="quick check: evaluate only DDIM-K full compute and BAC on it")
    p.add_argument("--gif-episodes", type=int, default=2)
    p.add_argument("--calib-observations", type=int, default=32,
                   help="demo observation histories the caching schedules are calibrated on "
                        "(x 2 noise seeds)")
    p.add_argument("--demos", default=None,
                   help="demonstrations the calibration histories are replayed from "
                        "(default: data/pusht/demos.npz)")
    p.add_argument("--out", default="build/eval", help="output folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from bac_ros.cli.common import REPO_DATA, print_json
    from bac_ros.engine.checkpoint import load_policy
    from bac_ros.pusht.eval import DEFAULT_METHODS, EvalConfig, evaluate, format_table

    policy = load_policy(args.checkpoint or REPO_DATA / "policies" / "pusht_lowdim.safetensors")
    methods = list(DEFAULT_METHODS)
    if args.ddim_only:
        k = args.ddim_only
        methods = [(f"DDIM-{k}", "ddim", k, "full", None, 0),
                   (f"BAC DDIM-{k} S={max(1, k // 2)}", "ddim", k, "bac", max(1, k // 2), 2)]
    elif args.methods:
        methods = [m for m in methods if m[0] in args.methods]
    cfg = EvalConfig(episodes=args.episodes, first_seed=args.first_seed,
                     max_steps=args.max_steps, methods=methods, gif_episodes=args.gif_episodes,
                     calib_observations=args.calib_observations,
                     demos=args.demos or str(REPO_DATA / "pusht" / "demos.npz"))
    rows = evaluate(policy, cfg, args.out, progress=not args.json)
    if args.json:
        print_json(rows)
    else:
        print(format_table(rows))
    return 0
