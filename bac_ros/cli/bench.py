"""`bac bench`: per-chunk denoising time of full compute vs BAC and the baselines."""

from __future__ import annotations

import argparse

from bac_ros.cli.common import add_policy_args, print_json

METHODS = ("full", "uniform", "shared_acs", "acs", "bac")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark full vs BAC vs baselines (DDPM-K and DDIM-k), side by side",
        description="Calibrate schedules on the fly (or use --schedule), then time the "
                    "denoising loop per chunk for every method, interleaved in one run, with "
                    "warm-up and CUDA synchronisation. Prints a markdown table (speedup vs full "
                    "measured in the same run, action error vs full with the same noise).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_policy_args(p)
    p.add_argument("--ddpm-steps", type=int, default=100, help="K for the DDPM rows")
    p.add_argument("--ddim-steps", type=int, default=10, help="k for the DDIM rows (0 = skip)")
    p.add_argument("--budget", "-S", type=int, default=10, help="BAC/baseline budget S")
    p.add_argument("--ddim-budget", type=int, default=4, help="S for the DDIM rows")
    p.add_argument("--bua-top-n", "-n", type=int, default=5)
    p.add_argument("--repeats", type=int, default=10, help="timed chunks per method")
    p.add_argument("--warmup", type=int, default=2, help="untimed chunks per method")
    p.add_argument("--batch", type=int, default=1, help="observations per forward")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="methods to time; full compute is always timed too (it is the "
                        "reference of the speedup and error columns)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    p.add_argument("--compile", action="store_true",
                   help="also time every method compiled (torch.compile/inductor, one graph "
                        "per distinct compute mask of the schedule; warm-up compiles)")
    p.add_argument("--max-graphs", type=int, default=8,
                   help="--compile: skip methods with more distinct compute masks than this")
    p.add_argument("--random-policy", choices=("lowdim", "image"), default=None,
                   help="benchmark a seeded random DP-T of --n-layer/--n-emb instead")
    p.add_argument("--n-layer", type=int, default=8)
    p.add_argument("--n-emb", type=int, default=256)
    p.add_argument("--schedule", default=None,
                   help="also time this schedule file (default for the bundled policy: its "
                        "bundled schedule; '' = none)")
    p.add_argument("--heldout", default=None,
                   help="observations (npz / rosbag2) for action_rel_err, never used for "
                        "calibration (default for the bundled low-dim policy: "
                        "data/pusht/heldout_lowdim.npz; else the timed random observation)")
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of {method, steps, chunk_ms_p50, ...}")
    p.set_defaults(func=run)


def _schedule_and_heldout(args, policy):
    from bac_ros.bac.capture import load_observations
    from bac_ros.bac.schedule import load_schedule
    from bac_ros.cli.common import (
        DEFAULT_BAG,
        REPO_DATA,
        bundled_heldout,
        bundled_policy,
        is_pusht_image,
        is_pusht_lowdim,
    )

    path = args.schedule
    if path is None and args.checkpoint is None and not args.random_policy:
        path = bundled_policy()[1]
    schedule = load_schedule(path) if path else None
    heldout_path, heldout, calibration = args.heldout, None, None
    if not args.random_policy and is_pusht_lowdim(policy):
        # calibrate the on-the-fly schedules on real demo observations
        calibration = load_observations(REPO_DATA / "pusht" / "calibration_lowdim.npz",
                                        policy, 16)
        heldout_path = heldout_path or bundled_heldout(policy)
    elif not args.random_policy and is_pusht_image(policy):
        # The bundled camera policy: the bundled bag, as `bac calibrate` splits a source:
        # every second observation held out, the others calibrate the on-the-fly schedules.
        obs = load_observations(DEFAULT_BAG, policy, 64)
        calibration, heldout = obs[0::2][:16], obs[1::2]
    if heldout_path:
        heldout = load_observations(heldout_path, policy, 10_000)
    return schedule, heldout, calibration


def run(args) -> int:
    from bac_ros.bac.benchmark import BenchConfig, format_markdown, run_benchmark
    from bac_ros.cli.common import load_policy_from_args

    if args.random_policy:
        from bac_ros.engine.testing import make_tiny_policy

        policy = make_tiny_policy(args.random_policy, n_layer=args.n_layer, n_emb=args.n_emb,
                                  image_hw=96).to(args.device)
    else:
        policy = load_policy_from_args(args)
    schedule, heldout, calibration = _schedule_and_heldout(args, policy)
    cfg = BenchConfig(ddpm_steps=args.ddpm_steps, ddim_steps=args.ddim_steps,
                      budget=args.budget, ddim_budget=args.ddim_budget,
                      bua_top_n=args.bua_top_n, repeats=args.repeats, warmup=args.warmup,
                      batch=args.batch, dtype=args.dtype,
                      methods=["full"] + [m for m in args.methods if m != "full"],
                      schedule=schedule, heldout=heldout, calibration=calibration,
                      compile=args.compile, max_graphs=args.max_graphs)
    rows, env = run_benchmark(policy, cfg, progress=not args.json)
    table = format_markdown(rows, env)
    for note in env.get("not_compiled", []):
        table += f"\nNot compiled: {note}\n"
    if args.markdown:
        from bac_ros.io_utils import atomic_write_text

        atomic_write_text(args.markdown, table)
    if args.json:
        print_json(rows)
    else:
        print(table)
    return 0
