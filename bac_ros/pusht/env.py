"""Push-T (gym-pusht) helpers: environment creation and the ROS view of it.

For the ROS side the agent position is the robot's joint state (joints ``agent_x``,
``agent_y``, pixels) and the rendered 96x96 frame is the camera image.
"""

from __future__ import annotations

import os

import numpy as np

JOINT_NAMES = ["agent_x", "agent_y"]
CONTROL_PERIOD_S = 0.1  # 10 Hz control, as gym-pusht


def make_env(obs_type: str = "pixels_agent_pos"):
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    import gym_pusht  # noqa: F401 - registers the env
    import gymnasium as gym

    return gym.make("gym_pusht/PushT-v0", obs_type=obs_type, render_mode="rgb_array")


def scripted_push_targets(state: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A simple pusher (not the expert): go behind the T relative to the goal, push toward it.

    Produces plausible, varied agent motion for recordings; it does not solve the task.
    """
    agent, block = state[:2], state[2:4]
    goal = np.array([256.0, 256.0])
    direction = goal - block
    dist = np.linalg.norm(direction)
    direction = direction / dist if dist > 1e-6 else np.array([1.0, 0.0])
    behind = block - 60.0 * direction
    if np.linalg.norm(agent - behind) > 25.0:
        target = agent + np.clip(behind - agent, -40, 40)
    else:
        target = agent + 30.0 * direction
    return np.clip(target + rng.normal(0, 3.0, 2), 0, 512)
