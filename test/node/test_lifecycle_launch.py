"""launch_testing: the managed node through its lifecycle, started by the real launch file.

`ros2 launch bac_ros policy.launch.py autostart:=false` brings the node up unconfigured; the
test drives it unconfigured -> inactive -> active -> inactive -> active (with the real
`ros2 lifecycle set` CLI) -> inactive -> unconfigured -> finalized through the lifecycle
services, feeding camera frames and joint states all along, and checks that commands flow
only while the node is active.
"""

import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

import launch_testing
import launch_testing.actions
import numpy as np
import pytest
import rclpy
from ament_index_python.packages import get_package_share_directory
from launch.actions import IncludeLaunchDescription, SetEnvironmentVariable, TimerAction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import Image, JointState

from launch import LaunchDescription

NS = "lifecycle_test"
NODE = f"/{NS}/bac_policy"


def _tiny_checkpoint() -> tuple[str, int]:
    from bac_ros.engine.checkpoint import save_policy
    from bac_ros.engine.testing import make_tiny_policy

    d = Path(tempfile.mkdtemp(prefix="bac_lifecycle_"))
    p = make_tiny_policy("image", num_inference_steps=4, scheduler="ddim", image_hw=32)
    return str(save_policy(p, d / "tiny_image.safetensors")), 32


@pytest.mark.launch_test
def generate_test_description():
    ckpt, hw = _tiny_checkpoint()
    launch_file = Path(get_package_share_directory("bac_ros")) / "launch" / "policy.launch.py"
    include = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(launch_file)),
        launch_arguments={"checkpoint": ckpt, "schedule": "", "namespace": NS,
                          "autostart": "false"}.items())
    # The timer keeps the launch alive after the node leaves on 'shutdown' (finalized), so
    # the test, not the process exit, ends the run.
    keep_alive = TimerAction(period=600.0, actions=[])
    # The installed executable runs `python3` from PATH, as in a sourced ROS workspace: here
    # that is this venv's (the README activates it; pytest may run without activation).
    path = SetEnvironmentVariable(
        "PATH", f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    return LaunchDescription([path, include, keep_alive,
                              launch_testing.actions.ReadyToTest()]), {"hw": hw}


class TestLifecycle(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        rclpy.init()
        cls.node = rclpy.create_node("lifecycle_probe")
        cls.executor = SingleThreadedExecutor()
        cls.executor.add_node(cls.node)
        cls.spin = threading.Thread(target=cls.executor.spin, daemon=True)
        cls.spin.start()

    @classmethod
    def tearDownClass(cls):
        cls.executor.shutdown()
        cls.node.destroy_node()
        rclpy.try_shutdown()

    def _call(self, client, request, timeout=60.0):
        self.assertTrue(client.wait_for_service(timeout_sec=60.0), client.srv_name)
        future = client.call_async(request)
        end = time.monotonic() + timeout
        while not future.done() and time.monotonic() < end:
            time.sleep(0.05)
        self.assertTrue(future.done(), f"{client.srv_name} did not answer")
        return future.result()

    def _state(self) -> int:
        return self._call(self.get_state, GetState.Request()).current_state.id

    def _transition(self, tid: int) -> None:
        res = self._call(self.change_state, ChangeState.Request(transition=Transition(id=tid)))
        self.assertTrue(res.success, f"transition {tid} failed")

    def _commands_during(self, seconds: float) -> int:
        n0 = len(self.commands)
        time.sleep(seconds)
        return len(self.commands) - n0

    def test_transitions_and_commands_only_while_active(self, hw, proc_info):
        self.get_state = self.node.create_client(GetState, f"{NODE}/get_state")
        self.change_state = self.node.create_client(ChangeState, f"{NODE}/change_state")
        self.commands = []
        self.node.create_subscription(JointState, f"{NODE}/command",
                                      lambda m: self.commands.append(time.monotonic()), 10)
        stop = threading.Event()
        feeder = threading.Thread(target=self._feed, args=(hw, stop), daemon=True)
        feeder.start()
        try:
            self.assertEqual(self._state(), State.PRIMARY_STATE_UNCONFIGURED)
            self.assertEqual(self._commands_during(1.0), 0)

            self._transition(Transition.TRANSITION_CONFIGURE)
            self.assertEqual(self._state(), State.PRIMARY_STATE_INACTIVE)
            self.assertEqual(self._commands_during(1.5), 0, "commands while inactive")

            self._transition(Transition.TRANSITION_ACTIVATE)
            self.assertEqual(self._state(), State.PRIMARY_STATE_ACTIVE)
            self.assertGreater(self._commands_during(3.0), 5, "no commands while active")

            self._transition(Transition.TRANSITION_DEACTIVATE)
            self.assertEqual(self._state(), State.PRIMARY_STATE_INACTIVE)
            time.sleep(0.3)  # messages already on the wire
            self.assertEqual(self._commands_during(1.5), 0, "a stale command after deactivate")

            # the real CLI a user types
            env = dict(os.environ)
            env["PATH"] = f"{Path(sys.prefix) / 'bin'}:{env.get('PATH', '')}"
            for _ in range(10):  # a freshly started ros2 daemon needs a moment to discover
                out = subprocess.run([str(Path(sys.prefix) / "bin" / "ros2"), "lifecycle",
                                      "set", NODE, "activate"], env=env, capture_output=True,
                                     text=True, timeout=120)
                if "Node not found" not in out.stdout + out.stderr:
                    break
                time.sleep(2.0)
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
            self.assertEqual(self._state(), State.PRIMARY_STATE_ACTIVE)
            self.assertGreater(self._commands_during(3.0), 5)

            self._transition(Transition.TRANSITION_DEACTIVATE)
            self._transition(Transition.TRANSITION_CLEANUP)
            self.assertEqual(self._state(), State.PRIMARY_STATE_UNCONFIGURED)
            self._transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
            # finalized: the process leaves by itself (exit code checked after shutdown)
            proc_info.assertWaitForShutdown(process="policy_node", timeout=60)
        finally:
            stop.set()
            feeder.join(timeout=5)

    def _feed(self, hw: int, stop: threading.Event) -> None:
        """Camera frames and joint states at 10 Hz, stamped now (what a robot publishes)."""
        cam = self.node.create_publisher(Image, "/camera/image_raw", 10)
        js = self.node.create_publisher(JointState, "/joint_states", 10)
        rng = np.random.default_rng(0)
        while not stop.is_set():
            stamp = self.node.get_clock().now().to_msg()
            img = Image(height=hw, width=hw, encoding="rgb8", step=3 * hw,
                        data=rng.integers(0, 255, hw * hw * 3, dtype=np.uint8).tobytes())
            img.header.stamp = stamp
            j = JointState(name=["agent_x", "agent_y"], position=[200.0, 300.0])
            j.header.stamp = stamp
            cam.publish(img)
            js.publish(j)
            time.sleep(0.1)


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_exit_code(self, proc_info):
        # Finalized by the test: the node process ended on its own, cleanly.
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0])
