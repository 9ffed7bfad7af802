"""`ros2 launch bac_ros policy.launch.py` starts the real node, which comes up and publishes."""

import os
import sys
import time
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.executors import SingleThreadedExecutor


def test_launch_file_starts_node(tiny_files, process_group):
    """The launch file's node reports OK diagnostics with our checkpoint and schedule."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.prefix) / 'bin'}:{env.get('PATH', '')}"
    proc = process_group(
        [str(Path(sys.prefix) / "bin" / "ros2"), "launch", "bac_ros", "policy.launch.py",
         f"checkpoint:={tiny_files['checkpoint']}", f"schedule:={tiny_files['schedule']}",
         "namespace:=launch_test"], env=env)
    got = []
    ctx_owner = not rclpy.ok()
    if ctx_owner:
        rclpy.init()
    node = rclpy.create_node("launch_probe")
    node.create_subscription(DiagnosticArray, "/diagnostics",
                             lambda m: got.extend(s for s in m.status
                                                  if s.name == "bac_ros: policy"), 10)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    try:
        end = time.monotonic() + 60
        while not got and time.monotonic() < end and proc.poll() is None:
            ex.spin_once(timeout_sec=0.2)
        assert got, f"no diagnostics from the launched node; output:\n{process_group.output(proc)}"
        assert got[0].level == DiagnosticStatus.OK  # configured, waiting for observations
        names = node.get_node_names_and_namespaces()
        assert ("bac_policy", "/launch_test") in names
    finally:
        ex.shutdown()
        node.destroy_node()
        if ctx_owner:
            rclpy.try_shutdown()
