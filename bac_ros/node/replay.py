"""Replay a rosbag2 file through a running policy node over real topics and measure it.

Used by `bac replay`, the README demo and the node tests. The bag's CDR bytes are
deserialized with rclpy and published at the bag's rate. Header stamps are kept as recorded,
shifted by one constant so that they are current (a bag's original stamps would all be
stale): out-of-order or duplicate stamps and camera/joint skew reach the node as recorded,
so its own checks run on them. ``restamp="log"`` re-stamps with the bag's log time instead.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data

from bac_ros.msg import ActionChunk, InferenceLatency


def read_bag(path: str | Path, topics: dict[str, str] | None = None):
    """[(t_ns, topic, msgtype, rawdata)] sorted by time; ``topics`` maps bag -> live topic."""
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag {path} does not exist")
    out = []
    with Reader(path) as reader:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        if not conns:
            raise ValueError(f"{path}: none of the topics {list(topics or [])} are in the bag "
                             f"(it has {[c.topic for c in reader.connections]})")
        for conn, t_ns, raw in reader.messages(connections=conns):
            live = topics.get(conn.topic, conn.topic) if topics else conn.topic
            out.append((t_ns, live, conn.msgtype, bytes(raw)))
    out.sort(key=lambda m: m[0])
    if not out:
        raise ValueError(f"{path}: the bag holds no messages on the requested topics")
    return out


def wait_until(pred, timeout_s: float = 10.0, poll_s: float = 0.05) -> bool:
    """Poll ``pred`` until it is true or ``timeout_s`` passes (outputs arrive over DDS)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(poll_s)
    return bool(pred())


def _msg_class(msgtype: str):
    from rosidl_runtime_py.utilities import get_message

    return get_message(msgtype)


@dataclass
class ReplayResult:
    chunks: list = field(default_factory=list)  # (receive_monotonic_s, ActionChunk)
    latencies: list = field(default_factory=list)  # InferenceLatency
    commands: list = field(default_factory=list)  # (receive_monotonic_s, msg)
    published: int = 0
    duration_s: float = 0.0
    counters: dict = field(default_factory=dict)  # the node's counters at the end
    robots: dict = field(default_factory=dict)  # robot name -> its ReplayResult (robots:=[...])

    def summary(self) -> dict:
        ok = [m for m in self.latencies if not m.warning]
        tot = np.array([m.total_ms for m in ok]) if ok else np.zeros(0)
        den = np.array([m.denoise_ms for m in ok]) if ok else np.zeros(0)

        def pct(a, q):
            return float(np.percentile(a, q)) if a.size else float("nan")

        cmd_t = np.array([t for t, _ in self.commands])
        pre = np.array([m.preprocess_ms for m in ok]) if ok else np.zeros(0)
        # Ticks the stream held between its first and last command (before the first chunk
        # and after the bag ends it holds by design): gaps in the command times.
        held = 0
        if len(cmd_t) > 2:
            gaps = np.diff(cmd_t)
            held = int(np.sum(np.maximum(0, np.round(gaps / np.median(gaps)) - 1)))
        return {
            "chunks": len(self.chunks), "inputs_published": self.published,
            "duration_s": round(self.duration_s, 3),
            "chunk_rate_hz": len(self.chunks) / self.duration_s if self.duration_s else 0.0,
            "total_ms_p50": pct(tot, 50), "total_ms_p95": pct(tot, 95),
            "total_ms_p99": pct(tot, 99), "denoise_ms_p50": pct(den, 50),
            "preprocess_ms_p50": pct(pre, 50), "held_ticks_while_serving": held,
            "command_rate_hz": (len(cmd_t) - 1) / (cmd_t[-1] - cmd_t[0]) if len(cmd_t) > 2
            else 0.0,
            "warnings": sorted({m.warning for m in self.latencies if m.warning})[:5],
            "bac_enabled": bool(ok and ok[-1].bac_enabled),
            "batch_size_mean": float(np.mean([m.batch_size for m in ok])) if ok else 0.0,
            "blocks_computed_frac": float(np.mean([m.blocks_computed / max(1, m.blocks_computed
                                                   + m.blocks_reused) for m in ok]))
            if ok else float("nan"),
            "rejections": {k: v for k, v in sorted(self.counters.items())
                           if v and (k.startswith("rejected") or k in (
                               "stale_skips", "unsynced_observation", "deadline_misses",
                               "inference_errors", "clock_jumps"))},
        }


class Probe(Node):
    """Subscribes to the node's outputs and records them with receipt times."""

    def __init__(self, node_name: str = "/bac_policy", name: str = "bac_probe"):
        super().__init__(name)
        self.result = ReplayResult()
        self._lock = threading.Lock()
        self.create_subscription(ActionChunk, f"{node_name}/action_chunk", self._chunk, 50)
        self.create_subscription(InferenceLatency, f"{node_name}/inference_latency",
                                 self._lat, 50)
        from sensor_msgs.msg import JointState

        self.create_subscription(JointState, f"{node_name}/command", self._cmd, 100)
        self.publishers_by_topic: dict = {}

    def _chunk(self, m):
        with self._lock:
            self.result.chunks.append((time.monotonic(), m))

    def _lat(self, m):
        with self._lock:
            self.result.latencies.append(m)

    def _cmd(self, m):
        with self._lock:
            self.result.commands.append((time.monotonic(), m))

    def drain(self) -> ReplayResult:
        """Hand over everything recorded so far and start empty (long runs: the probe's own
        records must not grow without bound, nor be mistaken for the node's memory)."""
        with self._lock:
            out, self.result = self.result, ReplayResult()
        return out

    def publisher(self, topic: str, msg_cls):
        return _publisher(self, self.publishers_by_topic, topic, msg_cls)

    def replay(self, messages, rate: float = 1.0, restamp: str | bool = "shift",
               stop: threading.Event | None = None, mutate=None, clock_pub=None) -> int:
        """Publish bag messages in real time (``rate`` x). ``restamp``: "shift" (header stamps
        as recorded, shifted by one constant to now; True means this), "log" (the bag's log
        time), or False (as recorded, e.g. with ``clock_pub`` publishing the bag's /clock).
        ``mutate(msg)`` may edit a message, drop it (None) or return a list of messages to
        publish in its place."""
        return publish_messages(self, self.publishers_by_topic, messages, rate, restamp, stop,
                                mutate, clock_pub)


def publish_messages(node, publishers: dict, messages, rate: float = 1.0,
                     restamp: str | bool = "shift", stop: threading.Event | None = None,
                     mutate=None, clock_pub=None) -> int:
    """The publishing loop behind ``Probe.replay`` and ``bac play``."""
    if restamp is True:
        restamp = "shift"
    if restamp not in ("shift", "log", False):
        raise ValueError(f"restamp must be 'shift', 'log' or False. Got {restamp!r}.")
    if not rate > 0:
        raise ValueError(f"rate must be > 0. Got {rate}.")
    classes = {}
    new = False
    for _, topic, msgtype, _ in messages:
        if topic not in classes:
            classes[topic] = _msg_class(msgtype)
            new |= topic not in publishers
            _publisher(node, publishers, topic, classes[topic])
    if new:
        time.sleep(1.0)  # DDS discovery of the new publishers
    from rclpy.serialization import deserialize_message

    t_bag0 = messages[0][0]
    wall0 = time.monotonic()
    ros0 = node.get_clock().now().nanoseconds
    first_header: tuple[int, int] | None = None  # (header ns, log ns) of the first stamped msg
    n = 0
    next_clock = 0.0
    for t_ns, topic, _, raw in messages:
        if stop is not None and stop.is_set():
            break
        target = wall0 + (t_ns - t_bag0) * 1e-9 / rate
        while True:
            now = time.monotonic()
            if clock_pub is not None and now >= next_clock:  # /clock at 100 Hz, bag time
                _publish_clock(clock_pub, t_bag0 + int((now - wall0) * rate * 1e9))
                next_clock = now + 0.01
            delay = target - now
            if delay <= 0:
                break
            time.sleep(min(delay, 0.01) if clock_pub is not None else delay)
        msg = deserialize_message(raw, classes[topic])
        if restamp and hasattr(msg, "header"):
            if restamp == "log":
                ns = ros0 + int((t_ns - t_bag0) / rate)
            else:
                h = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                if first_header is None:
                    first_header = (h, t_ns)
                ns = ros0 + int((first_header[1] - t_bag0) / rate) + \
                    int((h - first_header[0]) / rate)
            ns = max(ns, 0)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
        out = [msg] if mutate is None else mutate(msg)
        if out is None:
            continue
        for m in out if isinstance(out, list) else [out]:
            publishers[topic].publish(m)
            n += 1
    return n


def _publisher(node, publishers: dict, topic: str, msg_cls):
    """One sensor-data-QoS publisher per topic, created on first use."""
    if topic not in publishers:
        publishers[topic] = node.create_publisher(msg_cls, topic, qos_profile_sensor_data)
    return publishers[topic]


def _publish_clock(pub, ns: int) -> None:
    from rosgraph_msgs.msg import Clock

    c = Clock()
    c.clock.sec, c.clock.nanosec = divmod(int(ns), 1_000_000_000)
    pub.publish(c)


class LiveNode:
    """Runs a PolicyNode and a Probe in this process, each on its own executor thread
    (as two processes would), talking over real DDS topics."""

    def __init__(self, parameters: dict, node_name: str = "bac_policy"):
        from rclpy.parameter import Parameter

        from bac_ros.node.policy_node import PolicyNode, spin_node

        self._own_context = not rclpy.ok()
        if self._own_context:
            rclpy.init()
        overrides = [Parameter(k, value=v) for k, v in parameters.items()]
        self.node = PolicyNode(parameter_overrides=overrides)
        # One probe per robot served (robots:=[...]: the outputs are ~/<robot>/...).
        self.probes = {r: Probe(f"/{node_name}/{r}" if r else f"/{node_name}",
                                f"bac_probe_{r}" if r else "bac_probe")
                       for r in parameters.get("robots") or [""]}
        self.probe = next(iter(self.probes.values()))  # its publishers replay the inputs
        self._executors = [SingleThreadedExecutor(), SingleThreadedExecutor()]
        self._executors[0].add_node(self.node)
        for probe in self.probes.values():
            self._executors[1].add_node(probe)
        self._stop = threading.Event()
        # The node is served by the same capped loop as in its own process.
        self._threads = [threading.Thread(target=spin_node, daemon=True, args=(
            self._executors[0], self.node, lambda: rclpy.ok() and not self._stop.is_set())),
            threading.Thread(target=self._executors[1].spin, daemon=True)]
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self.node.shutdown()
        self._stop.set()
        for e in self._executors:
            e.shutdown()
        for t in self._threads:
            t.join(timeout=5)
        self.node.destroy_node()
        for probe in self.probes.values():
            probe.destroy_node()
        if self._own_context:
            rclpy.try_shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_replay(bag: str | Path, parameters: dict, topics: dict[str, str] | None = None,
               rate: float = 1.0, tail_s: float = 1.0) -> ReplayResult:
    """Start the node, replay ``bag`` through it, return what came out. With ``robots`` in
    ``parameters`` every robot gets the bag on its own topics (``/<robot>/<topic>``), all at
    once (their chunks fall due together: the batched case); the result is the first robot's,
    with every robot's in ``.robots``."""
    messages = fan_out(read_bag(bag, topics), parameters.get("robots") or [])
    with LiveNode(parameters) as live:
        t0 = time.monotonic()
        published = live.probe.replay(messages, rate=rate)
        time.sleep(tail_s)
        duration_s = time.monotonic() - t0 - 1.0
        for name, probe in live.probes.items():
            res = probe.result
            res.published, res.duration_s = published // len(live.probes), duration_s
            res.counters = dict(live.node.counters if not name else next(
                r.counters for r in live.node.robots if r.name == name))
        first = live.probe.result
        if parameters.get("robots"):
            first.robots = {name: p.result for name, p in live.probes.items()}
        return first


def fan_out(messages, robots: list[str]):
    """The bag's messages once per robot, on ``/<robot>/<topic>``, interleaved by time."""
    if not robots:
        return messages
    from bac_ros.node.robot import input_topic

    out = [(t, input_topic(r, topic), typ, raw) for r in robots
           for t, topic, typ, raw in messages]
    out.sort(key=lambda m: m[0])
    return out
