"""A joint-state driver gone wild (5 kHz) must not stop the command stream.

The real `policy_node` executable runs the bundled camera policy and its schedule; this
process replays the bundled bag's camera frames at their 10 Hz and floods /joint_states at
5 kHz with current stamps. Before the fix the node never formed a complete observation (its
fixed-size joint ring held only the last 80 ms, less than the camera's lag plus one
observation period) and, on the Python executor, starved inference of the GIL.
docs/reliability.md ("input floods") has the measurements.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import JointState

from bac_ros.node.replay import Probe, read_bag, wait_until

ROOT = Path(__file__).resolve().parents[2]
FLOOD_HZ = 5000.0
MEASURE_S = 6.0


def _flood(probe, msg: JointState, stop: threading.Event, sent: list) -> None:
    pub = probe.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
    period, nxt = 1.0 / FLOOD_HZ, time.monotonic()
    while not stop.is_set():
        msg.header.stamp = probe.get_clock().now().to_msg()
        pub.publish(msg)
        sent[0] += 1
        nxt += period
        lag = nxt - time.monotonic()
        if lag > 0:
            time.sleep(lag)
        elif lag < -0.1:  # fell behind: do not burst to catch up
            nxt = time.monotonic()


def _loop_frames(probe, frames, stop: threading.Event) -> None:
    while not stop.is_set():
        probe.replay(frames, stop=stop)


def test_command_stream_survives_a_5khz_joint_state_flood(bag, process_group):
    proc = process_group(
        [str(Path(sys.prefix) / "bin" / "policy_node"), "--ros-args",
         "-p", f"checkpoint:={ROOT / 'data/policies/pusht_image.safetensors'}",
         "-p", f"schedule:={ROOT / 'data/policies/pusht_image.schedule.yaml'}",
         "-r", "__node:=flood_policy"])
    ctx_owner = not rclpy.ok()
    if ctx_owner:
        rclpy.init()
    probe = Probe("/flood_policy", name="flood_probe")
    diags: list[dict] = []
    probe.create_subscription(
        DiagnosticArray, "/diagnostics",
        lambda m: diags.extend({kv.key: kv.value for kv in s.values} for s in m.status
                               if s.name == "bac_ros: policy"), 10)
    ex = SingleThreadedExecutor()
    ex.add_node(probe)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    stop = threading.Event()
    threads = []
    try:
        assert wait_until(lambda: diags or proc.poll() is not None, 60), "node never came up"
        assert proc.poll() is None, process_group.output(proc)
        messages = read_bag(bag)
        frames = [m for m in messages if m[1] != "/joint_states"]
        joints = deserialize_message(next(m for m in messages if m[1] == "/joint_states")[3],
                                     JointState)
        sent = [0]
        threads = [threading.Thread(target=_loop_frames, args=(probe, frames, stop),
                                    daemon=True),
                   threading.Thread(target=_flood, args=(probe, joints, stop, sent),
                                    daemon=True)]
        for t in threads:
            t.start()
        # Under the flood the node must still come to serve, then keep serving.
        assert wait_until(lambda: len(probe.result.commands) >= 5, 30), process_group.output(proc)
        probe.drain()
        first, n_sent, t0 = diags[-1], sent[0], time.monotonic()
        n_diag = len(diags)
        time.sleep(MEASURE_S)
        got = probe.drain()
        dt = time.monotonic() - t0
        flood_hz = (sent[0] - n_sent) / dt
        command_hz = len(got.commands) / dt
        last = diags[-1]
        ticks, held = (int(last.get(k, 0)) - int(first.get(k, 0)) for k in ("control_ticks",
                                                                      "hold_ticks"))
        print(f"flood {flood_hz:.0f} Hz -> command stream {command_hz:.1f} Hz, "
              f"{len(got.chunks)} chunks, diagnostics {len(diags) - n_diag}, held {held} of "
              f"{ticks} ticks, {last}")
        assert flood_hz > 0.5 * FLOOD_HZ, "the test's own flood fell short"
        assert command_hz >= 8.0, f"command stream {command_hz:.1f} Hz under the flood"
        assert len(diags) - n_diag >= MEASURE_S - 2, "/diagnostics went quiet"
        assert int(last["decimated_inputs"]) > 0
        assert held <= ticks // 5, f"{held} of {ticks} control ticks held"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
        ex.shutdown()
        probe.destroy_node()
        if ctx_owner:
            rclpy.try_shutdown()
