"""`bac calibrate`: compute a BAC cache schedule for a checkpoint."""

from __future__ import annotations

import argparse

from bac_ros.cli.common import add_policy_args, load_policy_from_args, print_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate", help="compute a BAC cache schedule (ACS + BUA) for a checkpoint",
        description="Run the policy at full compute on calibration observations, build the "
                    "per-block ACS schedule with BUA, save it (YAML) with plots next to it, "
                    "and print a fidelity/speed table vs full compute and the baselines.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_policy_args(p)
    p.add_argument("--source", default=None,
                   help="calibration observations: a rosbag2 directory/.mcap, or an .npz with "
                        "one (N, n_obs_steps, *shape) array per observation key; default: "
                        "the bundled bag")
    p.add_argument("--steps-budget", "--budget", "-S", dest="budget", type=int, default=10,
                   help="updates per block S, step 0 included (the paper's S)")
    p.add_argument("--bua-top-n", "-n", type=int, default=5, help="BUA top-n blocks")
    p.add_argument("--samples", "--observations", dest="observations", type=int, default=4,
                   help="calibration observations taken from the source (spread evenly over "
                        "it); each is run with every seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="noise seeds")
    p.add_argument("--force-last-step", action="store_true",
                   help="always recompute the last step (the authors' code does)")
    p.add_argument("--eval-samples", type=int, default=4,
                   help="(observation, noise) pairs per row of the fidelity table")
    p.add_argument("--timing-repeats", type=int, default=3,
                   help="timed denoiser runs per sample and method (median is reported)")
    p.add_argument("--table-budgets", type=int, nargs="*", default=None,
                   help="S values for the fidelity table (default: the chosen S)")
    p.add_argument("--out", "-o", required=True, help="schedule file to write (.yaml)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.set_defaults(func=run)


def observations_from_source(source, policy, limit):
    """--source (npz, zarr or rosbag2) or the bundled bag -> list of history dicts."""
    from bac_ros.bac.capture import load_observations
    from bac_ros.cli.common import DEFAULT_BAG

    return load_observations(source or DEFAULT_BAG, policy, limit)


def run(args) -> int:
    from bac_ros.bac.calibrate import CalibrationConfig, calibrate, format_table

    policy = load_policy_from_args(args)
    cfg = CalibrationConfig(budget=args.budget, bua_top_n=args.bua_top_n, seeds=args.seeds,
                            max_observations=args.observations,
                            force_last_step=args.force_last_step,
                            table_budgets=args.table_budgets or [],
                            eval_samples=args.eval_samples, timing_repeats=args.timing_repeats)
    obs = observations_from_source(args.source, policy, args.observations)
    res = calibrate(policy, obs, cfg, args.out, source=args.source or "bundled bag",
                    plots=not args.no_plots, progress=not args.json)
    if args.json:
        print_json({"schedule": res.schedule.to_dict(), "table": res.table,
                    "stability": res.stability, "files": res.files})
    else:
        s = res.schedule
        print(f"schedule {s.schedule_id} -> {args.out}: K={s.num_steps} S={s.budget} "
              f"n={s.bua_top_n} computed {100 * s.computed_fraction:.1f}% of blocks, "
              f"expected FLOPs ratio {s.flops_ratio:.2f}x; BUA picked {s.bua_selected}")
        print(f"stability across calibration samples: {res.stability}")
        print(format_table(res.table))
        for k, v in res.files.items():
            print(f"{k}: {v}")
    return 0
