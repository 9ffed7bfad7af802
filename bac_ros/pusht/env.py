"""Push-T (gym-pusht) helpers: environment creation and the ROS view of it.

For the ROS side the agent position is the robot's joint state (joints ``agent_x``,
``agent_y``, pixels) and the rendered 96x96 frame is the camera image.
"""

from __future__ import annotations

import os

JOINT_NAMES = ["agent_x", "agent_y"]
# The T's 8 keypoints (gym-pusht's environment_state order) as named values.
KEYPOINT_NAMES = [f"kp{i}_{a}" for i in range(8) for a in "xy"]
CONTROL_PERIOD_S = 0.1  # 10 Hz control, as gym-pusht


def make_env(obs_type: str = "pixels_agent_pos"):
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    import gym_pusht  # noqa: F401 - registers the env
    import gymnasium as gym

    return gym.make("gym_pusht/PushT-v0", obs_type=obs_type, render_mode="rgb_array")
