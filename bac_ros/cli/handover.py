"""`bac handover`: chunk hand-over modes under simulated inference delay, in closed loop."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from bac_ros.pusht.delay_eval import MODES

    p = subparsers.add_parser(
        "handover", help="compare chunk hand-over modes (replace, temporal_ensemble, blend, "
                         "rtc) in Push-T with simulated inference delay",
        description="Roll the policy out in gym-pusht with chunks arriving D control steps "
                    "after their observation (the current chunk keeps executing meanwhile, as "
                    "on a robot), for each hand-over mode and delay. Same seeds and noise for "
                    "every mode: per-episode coverage differences to `replace` at the same "
                    "delay get a paired 95%% bootstrap interval. Also reports the mean action "
                    "jump when a new chunk takes over vs within chunks (px). Resumable per "
                    "(mode, delay, batch) in --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="policy (default: the bundled one, with its schedule)")
    p.add_argument("--schedule", default=None,
                   help="cache schedule ('' = full compute; default: the bundled policy's)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--delays", nargs="+", type=int, default=[0, 2, 4],
                   help="inference delays in control steps (<= the replan interval)")
    p.add_argument("--replan-every", type=int, default=0,
                   help="control steps between chunk requests (0 = the policy's n_action_steps)")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--batch-episodes", type=int, default=50)
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--first-seed", type=int, default=900_000)
    p.add_argument("--out", default="build/handover", help="output folder (resumed if present)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from bac_ros.bac.cache import ScheduledBlockCache
    from bac_ros.bac.schedule import load_schedule
    from bac_ros.cli.common import node_policy_files, print_json
    from bac_ros.engine.checkpoint import load_policy
    from bac_ros.io_utils import atomic_write_text
    from bac_ros.pusht.delay_eval import rollout_with_delay
    from bac_ros.stats import paired_difference

    if args.episodes < 1 or args.batch_episodes < 1 or args.max_steps < 1:
        raise ValueError("--episodes, --batch-episodes and --max-steps must be >= 1")
    ckpt, sched_path = node_policy_files(args.checkpoint, args.schedule)
    policy = load_policy(ckpt)
    sched = load_schedule(sched_path, policy=policy) if sched_path else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [args.first_seed + i for i in range(args.episodes)]
    batches = [seeds[i:i + args.batch_episodes] for i in range(0, len(seeds),
                                                                args.batch_episodes)]
    per: dict[tuple[str, int], dict] = {}
    for d in args.delays:
        for mode in args.modes:
            cov, succ, bj, ij = [], [], [], []
            for b, batch in enumerate(batches):
                f = out / f"{mode}_d{d}_b{b}.json"
                if f.exists():
                    rec = json.loads(f.read_text())
                else:
                    cache = None if sched is None else \
                        ScheduledBlockCache(sched, policy.model.blocks())
                    r = rollout_with_delay(policy, batch, args.max_steps, d, mode,
                                           args.replan_every, cache=cache, noise_seed=b,
                                           progress=not args.json)
                    rec = {"coverage": r.max_coverage.tolist(),
                           "success": r.success.tolist(),
                           "boundary_jump_px": r.boundary_jump_px,
                           "inner_jump_px": r.inner_jump_px}
                    atomic_write_text(f, json.dumps(rec))
                cov += rec["coverage"]
                succ += rec["success"]
                bj.append(rec["boundary_jump_px"])
                ij.append(rec["inner_jump_px"])
            per[(mode, d)] = {"mode": mode, "delay_steps": d, "episodes": len(cov),
                              "success_rate": float(np.mean(succ)),
                              "mean_max_coverage": float(np.mean(cov)),
                              "boundary_jump_px": float(np.mean(bj)),
                              "inner_jump_px": float(np.mean(ij)), "_cov": cov}
    rows = []
    for (mode, d), row in per.items():
        ref = per.get(("replace", d))
        if ref is not None and mode != "replace":
            diff = paired_difference(row["_cov"], ref["_cov"])
            row["diff_vs_replace"] = diff["mean"]
            row["diff_vs_replace_ci95"] = diff["ci95"]
        rows.append({k: v for k, v in row.items() if k != "_cov"})
    lines = ["| delay (steps) | mode | success | mean max coverage | diff vs replace [95% CI] "
             "| jump at hand-over (px) | jump within chunks (px) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = r.get("diff_vs_replace_ci95")
        diff = f"{r['diff_vs_replace']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "-"
        lines.append(f"| {r['delay_steps']} | {r['mode']} | {r['success_rate']:.2f} | "
                     f"{r['mean_max_coverage']:.3f} | {diff} | {r['boundary_jump_px']:.1f} | "
                     f"{r['inner_jump_px']:.1f} |")
    table = "\n".join(lines)
    atomic_write_text(out / "results.md", f"policy {ckpt}, schedule {sched_path or 'none'}, "
                      f"{args.episodes} episodes\n\n{table}\n")
    atomic_write_text(out / "results.json", json.dumps(rows, indent=1))
    if args.json:
        print_json(rows)
    else:
        print(table)
    return 0
