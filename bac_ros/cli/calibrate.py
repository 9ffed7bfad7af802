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
    p.add_argument("--force-last-step", action=argparse.BooleanOptionalAction, default=True,
                   help="always recompute the last denoising step, as the authors' code does; "
                        "on by default because closed loop favoured it at S = 10, 15 and 20 "
                        "(docs/bac.md); it applies to the ACS-based methods")
    p.add_argument("--eval-samples", type=int, default=4,
                   help="(observation, noise) pairs per row of the fidelity table")
    p.add_argument("--timing-repeats", type=int, default=3,
                   help="timed denoiser runs per sample and method (median is reported)")
    p.add_argument("--table-budgets", type=int, nargs="*", default=None,
                   help="S values for the fidelity table (default: the chosen S)")
    p.add_argument("--method", choices=("bac", "acs", "shared_acs", "uniform", "search"),
                   default="bac",
                   help="schedule to write: BAC as published (ACS + BUA), its parts, Uniform, "
                        "or `search` (minimises the final action error within Uniform S's "
                        "FLOPs; not in the paper)")
    p.add_argument("--search-evals", type=int, default=300,
                   help="candidate schedules `--method search` may score")
    p.add_argument("--heldout", default=None,
                   help="observations for the fidelity table and --max-action-error, never "
                        "used for calibration (same formats as --source); default: for the "
                        "bundled low-dim policy data/pusht/heldout_lowdim.npz, else every "
                        "second observation of --source is held out")
    p.add_argument("--max-action-error", type=float, default=None, metavar="E",
                   help="operating point, open loop: the cheapest budget of "
                        "--candidate-budgets whose held-out mean action error (normalized "
                        "units) is <= E (overrides -S)")
    p.add_argument("--max-coverage-drop", type=float, default=None, metavar="D",
                   help="operating point, closed loop (Push-T policies: gym-pusht is the "
                        "simulator): the cheapest budget whose paired 95%% interval of the "
                        "coverage difference to full compute stays above -D over "
                        "--closed-loop-episodes test episodes (overrides -S; slow)")
    p.add_argument("--candidate-budgets", type=int, nargs="+",
                   default=[5, 7, 10, 15, 20, 25, 30, 40, 50],
                   help="budgets S tried, cheapest first, by the operating-point options")
    p.add_argument("--closed-loop-episodes", type=int, default=200)
    p.add_argument("--out", "-o", required=True, help="schedule file to write (.yaml)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.set_defaults(func=run)


def observations_from_source(source, policy, limit):
    """--source (npz, zarr or rosbag2) or the bundled bag -> list of history dicts."""
    from bac_ros.bac.capture import load_observations
    from bac_ros.cli.common import DEFAULT_BAG

    return load_observations(source or DEFAULT_BAG, policy, limit)


def _split_heldout(args, policy, obs):
    """Held-out observations: --heldout, the bundled held-out set for the bundled policy, or
    every second observation of the source (then the calibration keeps the others)."""
    from bac_ros.bac.capture import load_observations
    from bac_ros.cli.common import bundled_heldout

    heldout = args.heldout or bundled_heldout(policy)
    if heldout:
        return obs, load_observations(heldout, policy, 10_000)
    if len(obs) < 2:
        return obs, None
    return obs[0::2], obs[1::2]


def _closed_loop_operating_point(args, policy) -> tuple[int, list[dict], str]:
    """Cheapest budget whose paired coverage difference is non-inferior (Push-T)."""
    from pathlib import Path

    from bac_ros.bac.methods import parse_method
    from bac_ros.pusht.eval import EvalConfig, ScheduleFactory, run_method, slug, summarize

    if "agent_pos" not in policy.config.shape_meta.obs:
        raise ValueError("--max-coverage-drop needs a Push-T policy (gym-pusht is the only "
                         "simulator bundled); use --max-action-error for other policies.")
    work = Path(str(args.out) + ".closed_loop")
    cfg = EvalConfig(episodes=args.closed_loop_episodes, methods=["full"], gif_episodes=0,
                     margin=args.max_coverage_drop)
    factory = ScheduleFactory(policy, cfg, progress=not args.json)
    records = {"full": run_method(policy, cfg, cfg.specs[0], work, factory,
                                  progress=not args.json)}
    tried = []
    for S in sorted(b for b in args.candidate_budgets if b <= policy.num_inference_steps):
        last = args.force_last_step and args.method in ("bac", "acs", "shared_acs")
        spec = parse_method(f"{args.method}{'+last' if last else ''}:{S}")
        records[spec.name] = run_method(policy, cfg, spec, work, factory,
                                        progress=not args.json)
        row = summarize({"full": records["full"], spec.name: records[spec.name]}, cfg)[1]
        d = row["paired_coverage_diff"]
        tried.append({"S": S, "paired_coverage_diff": d["mean"], "ci95": d["ci95"],
                      "flops_ratio": row["flops_ratio"], "noninferior": d["noninferior"]})
        if not args.json:
            print(f"  S={S}: coverage diff {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, "
                  f"{d['ci95'][1]:+.3f}], FLOPs ratio {row['flops_ratio']:.2f}x", flush=True)
        if d["noninferior"]:
            return S, tried, str(work / "schedules" / f"{slug(spec.name)}.yaml")
    raise ValueError(f"no budget in {args.candidate_budgets} is non-inferior to full compute "
                     f"within -{args.max_coverage_drop} coverage over "
                     f"{args.closed_loop_episodes} episodes: {tried}")


def run(args) -> int:
    import shutil

    from bac_ros.bac.calibrate import CalibrationConfig, calibrate, format_table
    from bac_ros.cli.common import bundled_policy
    from bac_ros.io_utils import refuse_overwrite

    refuse_overwrite(args.out, args.checkpoint or bundled_policy()[0], args.source,
                     args.heldout)
    policy = load_policy_from_args(args)
    budget, closed = args.budget, None
    if args.max_coverage_drop is not None:
        budget, tried, path = _closed_loop_operating_point(args, policy)
        closed = {"max_coverage_drop": args.max_coverage_drop, "tried": tried,
                  "episodes": args.closed_loop_episodes}
    cfg = CalibrationConfig(budget=budget, bua_top_n=args.bua_top_n, seeds=args.seeds,
                            max_observations=args.observations,
                            force_last_step=args.force_last_step,
                            table_budgets=args.table_budgets or [],
                            eval_samples=args.eval_samples, timing_repeats=args.timing_repeats,
                            method=args.method, search_evals=args.search_evals,
                            max_action_error=None if closed else args.max_action_error,
                            candidate_budgets=args.candidate_budgets)
    obs = observations_from_source(args.source, policy, args.observations * 2
                                   if not args.heldout else args.observations)
    calib_obs, heldout = _split_heldout(args, policy, obs)
    res = calibrate(policy, calib_obs, cfg, args.out, source=args.source or "bundled bag",
                    plots=not args.no_plots, progress=not args.json, heldout=heldout)
    if closed:
        # The schedule proven in closed loop is the one written (calibrated on demo
        # histories by the evaluation); the table above describes the same budget.
        shutil.copyfile(path, args.out)
    if args.json:
        print_json({"schedule": res.schedule.to_dict(), "table": res.table,
                    "table_source": res.table_source, "operating_point": res.operating_point,
                    "closed_loop": closed, "stability": res.stability, "files": res.files})
    else:
        s = res.schedule
        print(f"schedule {s.schedule_id} -> {args.out}: {s.method} K={s.num_steps} "
              f"S={s.budget} n={s.bua_top_n} computed {100 * s.computed_fraction:.1f}% of "
              f"blocks, expected FLOPs ratio {s.flops_ratio:.2f}x; BUA picked {s.bua_selected}")
        print(f"stability across calibration samples: {res.stability}")
        print(f"fidelity table measured on {res.table_source}:")
        print(format_table(res.table))
        for k, v in res.files.items():
            print(f"{k}: {v}")
    return 0
