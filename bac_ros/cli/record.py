"""`bac record`: a Push-T rosbag2 (camera + joint states) from closed-loop rollouts."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "record", help="record a Push-T bag driven by a policy (or the scripted expert)",
        description="Simulate Push-T and write a rosbag2 (mcap): /camera/image_raw "
                    "(sensor_msgs/Image rgb8 96x96) and /joint_states (agent_x/agent_y plus the "
                    "T keypoints kp{i}_x/y). The agent is driven in closed loop by the given "
                    "policy (full compute unless --schedule, n_action_steps actions per chunk, "
                    "seeded noise: the same bag for the same seed) or by the scripted expert. "
                    "A solved episode resets to the next seed, as a robot would be reset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", help="bag directory to write (must not exist)")
    p.add_argument("--policy", default=None,
                   help="policy checkpoint driving the agent (default: the scripted expert)")
    p.add_argument("--schedule", default=None, help="cache schedule for the policy")
    p.add_argument("--n-action-steps", type=int, default=0,
                   help="actions executed per chunk (0 = the policy's own)")
    p.add_argument("--duration-s", type=float, default=12.0)
    p.add_argument("--seed", type=int, default=7, help="first episode's seed and noise seed")
    p.add_argument("--camera-hz", type=float, default=10.0)
    p.add_argument("--joint-hz", type=float, default=100.0)
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from bac_ros.cli.common import print_json

    out = Path(args.out)
    if out.exists():
        raise FileExistsError(f"{out} exists: remove it or choose another bag directory")
    if not (0 < args.duration_s <= 3600 and 0 < args.camera_hz <= 1000
            and 0 < args.joint_hz <= 10_000 and args.n_action_steps >= 0):
        raise ValueError("need 0 < --duration-s <= 3600, 0 < --camera-hz <= 1000, "
                         "0 < --joint-hz <= 10000 and --n-action-steps >= 0")
    from bac_ros.pusht.bag import PolicyDriver, record_bag

    driver = None
    if args.policy:
        from bac_ros.bac.schedule import load_schedule
        from bac_ros.engine.checkpoint import load_policy

        policy = load_policy(args.policy)
        sched = load_schedule(args.schedule, policy=policy) if args.schedule else None
        driver = PolicyDriver(policy, args.seed, sched, args.n_action_steps)
    elif args.schedule:
        raise ValueError("--schedule needs --policy")
    record_bag(out, duration_s=args.duration_s, seed=args.seed, camera_hz=args.camera_hz,
               joint_hz=args.joint_hz, driver=driver)
    summary = {"bag": str(out), "driver": args.policy or "expert",
               "schedule": args.schedule, "duration_s": args.duration_s, "seed": args.seed}
    if args.json:
        print_json(summary)
    else:
        print(f"wrote {out} ({args.duration_s} s, driven by {summary['driver']})")
    return 0
