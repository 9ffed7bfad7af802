"""`bac eval`: closed-loop Push-T evaluation of full compute vs cached schedules (paired)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="closed-loop Push-T: full vs BAC vs baselines, paired per episode",
        description="Roll the policy out in gym-pusht on fixed test seeds, episodes batched "
                    "into one forward per re-plan, identical noise per (batch, chunk) for every "
                    "method. Reports per method: success, mean max coverage, blocks computed, "
                    "FLOPs ratio and the paired coverage difference to full compute with a 95%% "
                    "bootstrap interval, plus the noise floor (full compute, other noise). "
                    "Resumable: results are saved per (method, batch) in --out; run several "
                    "processes with different --methods into the same --out to use more cores. "
                    "Writes results.md, results.json (per-episode values), pareto.png, GIFs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="policy (default: the bundled one, data/policies/pusht_image.safetensors "
                        "when shipped)")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--batch-episodes", type=int, default=50,
                   help="environments stepped together (one batched forward); the resume unit")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--first-seed", type=int, default=900_000, help="first test seed")
    p.add_argument("--methods", nargs="+", default=None, metavar="SPEC",
                   help="method specs: full, ddim:K, bac:S, bac+last:S, acs:S, shared_acs:S, "
                        "uniform:S, search:S, METHOD:S@ddim:K, file:SCHEDULE.yaml "
                        "(default: full bac:10 bac+last:10 uniform:10 acs:10 shared_acs:10 "
                        "search:10 ddim:10); full is always added")
    p.add_argument("--no-noise-floor", action="store_true",
                   help="skip the second full-compute run with other noise")
    p.add_argument("--noise-seed", type=int, default=0)
    p.add_argument("--margin", type=float, default=0.03,
                   help="non-inferiority margin on mean max coverage")
    p.add_argument("--gif-episodes", type=int, default=1)
    p.add_argument("--calib-observations", type=int, default=32,
                   help="demo observation histories the caching schedules are calibrated on "
                        "(x 2 noise seeds)")
    p.add_argument("--search-evals", type=int, default=300,
                   help="candidate schedules the output-targeted search may score")
    p.add_argument("--demos", default=None,
                   help="demonstrations the calibration histories are replayed from "
                        "(default: data/pusht/demos.npz)")
    p.add_argument("--n-action-steps", type=int, default=0,
                   help="actions executed per chunk before re-planning (0 = the policy's own; "
                        "the node's n_execute)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default="build/eval", help="output folder (resumed if present)")
    p.add_argument("--compile", action="store_true",
                   help="run every method (and full compute) compiled, as the node does by "
                        "default (bac.compiled.CompiledSchedule); use its own --out")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from bac_ros.cli.common import REPO_DATA, bundled_policy, print_json
    from bac_ros.engine.checkpoint import load_policy
    from bac_ros.pusht.eval import DEFAULT_METHODS, EvalConfig, evaluate, format_table

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = EvalConfig(episodes=args.episodes, first_seed=args.first_seed,
                     max_steps=args.max_steps, methods=args.methods or list(DEFAULT_METHODS),
                     batch_episodes=args.batch_episodes, noise_seed=args.noise_seed,
                     noise_floor=not args.no_noise_floor, gif_episodes=args.gif_episodes,
                     calib_observations=args.calib_observations,
                     search_evals=args.search_evals, margin=args.margin,
                     demos=args.demos or str(REPO_DATA / "pusht" / "demos.npz"),
                     compile=args.compile)
    policy = load_policy(args.checkpoint or bundled_policy()[0])
    if args.n_action_steps:
        import dataclasses

        most = policy.config.horizon - policy.config.n_obs_steps + 1
        if not 1 <= args.n_action_steps <= most:
            raise SystemExit(f"bac eval: --n-action-steps must be in [1, {most}] (the predicted "
                             f"actions from the last observation on). Got {args.n_action_steps}.")
        policy.config = dataclasses.replace(policy.config, n_action_steps=args.n_action_steps)
    rows = evaluate(policy, cfg, args.out, progress=not args.json)
    if args.json:
        print_json(rows)
    else:
        print(format_table(rows))
        print(f"per-episode values: {args.out}/results.json; plot: {args.out}/pareto.png")
    return 0
