"""`bac play`: publish a rosbag2 on live topics for a node started elsewhere (no ROS install
needed: a `ros2 bag play` for the pip-installed ROS 2 of this repo)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "play", help="publish a bag on live topics (for a node you launched yourself)",
        description="Publish a rosbag2 recording on live topics at its recorded rate. Header "
                    "stamps are kept as recorded, shifted by one constant so they are current "
                    "(out-of-order stamps and sensor skew reach the node as recorded). With "
                    "--clock, stamps stay as recorded and /clock publishes the bag's time "
                    "(run the node with use_sim_time:=true).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("bag", nargs="?", default=None,
                   help="rosbag2 directory or .mcap (default: the bundled Push-T bag)")
    p.add_argument("--rate", type=float, default=1.0, help="speed factor")
    p.add_argument("--loop", type=int, default=1, metavar="N",
                   help="play N times (0 = until interrupted); stamps keep increasing")
    p.add_argument("--clock", action="store_true",
                   help="publish /clock with the bag's time and keep header stamps as recorded")
    p.add_argument("--topics", nargs="+", default=None, help="only these bag topics")
    p.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                   help="bag topic -> live topic")
    p.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    import rclpy
    from rclpy.node import Node

    from bac_ros.cli.common import DEFAULT_BAG, parse_pairs, print_json
    from bac_ros.node.replay import publish_messages, read_bag

    if not args.rate > 0:
        raise ValueError(f"--rate must be > 0. Got {args.rate}.")
    if args.loop < 0:
        raise ValueError(f"--loop must be >= 0. Got {args.loop}.")
    remap = parse_pairs(args.remap, "--remap")
    topics = None
    if args.topics or remap:
        from rosbags.rosbag2 import Reader

        with Reader(args.bag or DEFAULT_BAG) as r:
            names = [c.topic for c in r.connections]
        topics = {t: remap.get(t, t) for t in (args.topics or names)}
    messages = read_bag(args.bag or DEFAULT_BAG, topics)
    span_ns = messages[-1][0] - messages[0][0] + 100_000_000  # next loop starts 0.1 s later
    rclpy.init()
    node = Node("bac_play")
    pubs: dict = {}
    clock_pub = None
    if args.clock:
        from rosgraph_msgs.msg import Clock

        clock_pub = node.create_publisher(Clock, "/clock", 10)
    published, loops, t0 = 0, 0, time.monotonic()
    try:
        while args.loop == 0 or loops < args.loop:
            shifted = [(t + loops * span_ns, topic, typ, raw)
                       for t, topic, typ, raw in messages]
            published += publish_messages(node, pubs, shifted, rate=args.rate,
                                          restamp=False if args.clock else "shift",
                                          clock_pub=clock_pub)
            loops += 1
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    info = {"bag": str(args.bag or DEFAULT_BAG), "published": published, "loops": loops,
            "topics": sorted({t for _, t, _, _ in messages}),
            "seconds": round(time.monotonic() - t0, 2)}
    if args.json:
        print_json(info)
    else:
        print(f"published {published} messages on {info['topics']} ({loops} loop(s), "
              f"{info['seconds']} s)")
    return 0
