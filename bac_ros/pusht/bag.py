"""Record a small rosbag2 (mcap) of Push-T: camera frames + joint states, real stamps/rates.

The scene is driven by a trained policy in closed loop (``policy=``: what the node itself
would see and do; the bundled bag comes from the bundled image policy) or by the Push-T
expert (``expert.py``). Camera: sensor_msgs/msg/Image rgb8 96x96 at ``camera_hz`` (frames rendered at
every 10 Hz control step, repeated for higher camera rates). Joint states:
sensor_msgs/msg/JointState at ``joint_hz`` with the agent position (``agent_x``,
``agent_y``, pixels, interpolated between control steps) and, for low-dim policies, the 8 T
keypoints as named values ``kp{i}_x`` / ``kp{i}_y`` (what a perception node would publish).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bac_ros.pusht.env import CONTROL_PERIOD_S, JOINT_NAMES, KEYPOINT_NAMES, make_env
from bac_ros.pusht.expert import PushExpert

CAMERA_TOPIC = "/camera/image_raw"
JOINT_TOPIC = "/joint_states"


class ExpertDriver:
    """The scripted push expert: one push primitive at a time."""

    def __init__(self, seed: int):
        self.expert, self.plan = PushExpert(seed), []

    def reset(self) -> None:
        self.plan = []

    def __call__(self, env, obs) -> np.ndarray:
        if not self.plan:
            self.plan = list(self.expert.plan(env))
        return np.asarray(self.plan.pop(0), dtype=np.float64)


class PolicyDriver:
    """A policy in closed loop, as the node runs it: a chunk from the last n_obs_steps
    observations, n_action_steps of it executed, then the next chunk (full compute, or a
    cache schedule). Seeded noise: the same bag for the same seed."""

    def __init__(self, policy, seed: int, schedule=None, n_action_steps: int = 0):
        import torch

        from bac_ros.bac.cache import ScheduledBlockCache

        self.policy = policy
        self.cache = None if schedule is None else \
            ScheduledBlockCache(schedule, policy.model.blocks())
        self.n_exec = n_action_steps or policy.config.n_action_steps
        self.gen = torch.Generator().manual_seed(seed)
        self.hist, self.queue = [], []

    def reset(self) -> None:
        self.hist, self.queue = [], []

    def __call__(self, env, obs) -> np.ndarray:
        import torch

        from bac_ros.pusht.eval import _obs_dict

        To = self.policy.config.n_obs_steps
        self.hist = self.hist[1:] + [obs] if self.hist else [obs] * To
        if not self.queue:
            with torch.no_grad():
                pred = self.policy.predict(_obs_dict([self.hist], self.policy),
                                           generator=self.gen, cache=self.cache)
            self.queue = list(pred.action[0, :self.n_exec].astype(np.float64))
        return self.queue.pop(0)


def record_bag(out: str | Path, duration_s: float = 10.0, seed: int = 0, camera_hz: float = 10.0,
               joint_hz: float = 100.0, start_time_s: float = 1_700_000_000.0,
               driver=None) -> Path:
    """Write a bag directory ``out`` (mcap storage). Deterministic for a seed.

    ``driver(env, obs) -> action`` (with ``reset()``) moves the agent: a ``PolicyDriver``
    or, by default, the expert."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    Image, JointState = ts.types["sensor_msgs/msg/Image"], ts.types["sensor_msgs/msg/JointState"]
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]

    env = make_env("pixels_agent_pos")
    obs, _ = env.reset(seed=seed)
    driver = driver if driver is not None else ExpertDriver(seed)
    driver.reset()
    steps = int(round(duration_s / CONTROL_PERIOD_S))
    frames, agent, keypoints = [], [], []
    for _ in range(steps):
        frames.append(obs["pixels"].copy())
        agent.append(np.asarray(obs["agent_pos"], dtype=np.float64))
        u = env.unwrapped
        keypoints.append(u.get_keypoints(u._block_shapes).flatten().astype(np.float64))
        obs, _, terminated, *_ = env.step(driver(env, obs))
        if terminated:  # solved: start the next episode, as a robot would be reset
            obs, _ = env.reset(seed=seed + len(frames))
            driver.reset()
    env.close()
    agent = np.array(agent)

    def stamp(t):
        sec = int(t)
        return Time(sec=sec, nanosec=int(round((t - sec) * 1e9)) % 1_000_000_000)

    out = Path(out)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    with Writer(out, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        cam = writer.add_connection(CAMERA_TOPIC, Image.__msgtype__, typestore=ts)
        js = writer.add_connection(JOINT_TOPIC, JointState.__msgtype__, typestore=ts)
        events = []
        for i in range(int(duration_s * camera_hz)):
            t = i / camera_hz
            events.append((t, "cam", min(int(t / CONTROL_PERIOD_S), steps - 1)))
        for i in range(int(duration_s * joint_hz)):
            events.append((i / joint_hz, "js", None))
        for t, kind, k in sorted(events, key=lambda e: (e[0], e[1])):
            abs_t = start_time_s + t
            header = Header(stamp=stamp(abs_t), frame_id="camera" if kind == "cam" else "base")
            if kind == "cam":
                img = frames[k]
                msg = Image(header=header, height=img.shape[0], width=img.shape[1],
                            encoding="rgb8", is_bigendian=0, step=img.shape[1] * 3,
                            data=np.ascontiguousarray(img, dtype=np.uint8).reshape(-1))
                writer.write(cam, int(abs_t * 1e9), ts.serialize_cdr(msg, Image.__msgtype__))
            else:
                x = t / CONTROL_PERIOD_S
                i0 = min(int(x), steps - 1)
                i1 = min(i0 + 1, steps - 1)
                pos = agent[i0] + (x - i0) * (agent[i1] - agent[i0])
                msg = JointState(header=header, name=list(JOINT_NAMES) + list(KEYPOINT_NAMES),
                                 position=np.concatenate([pos, keypoints[i0]]),
                                 velocity=np.zeros(0), effort=np.zeros(0))
                writer.write(js, int(abs_t * 1e9), ts.serialize_cdr(msg, JointState.__msgtype__))
    return out
