"""Record a small rosbag2 (mcap) of Push-T: camera frames + joint states, real stamps/rates.

The scene is driven by the Push-T expert (``expert.py``), so the motion is a real
demonstration. Camera: sensor_msgs/msg/Image rgb8 96x96 at ``camera_hz`` (frames rendered at
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


def record_bag(out: str | Path, duration_s: float = 10.0, seed: int = 0, camera_hz: float = 10.0,
               joint_hz: float = 100.0, start_time_s: float = 1_700_000_000.0) -> Path:
    """Write a bag directory ``out`` (mcap storage). Deterministic for a seed."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    Image, JointState = ts.types["sensor_msgs/msg/Image"], ts.types["sensor_msgs/msg/JointState"]
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]

    env = make_env("pixels_agent_pos")
    obs, _ = env.reset(seed=seed)
    expert = PushExpert(seed)
    steps = int(round(duration_s / CONTROL_PERIOD_S))
    frames, agent, keypoints, plan = [], [], [], []
    for _ in range(steps):
        frames.append(obs["pixels"].copy())
        agent.append(np.asarray(obs["agent_pos"], dtype=np.float64))
        u = env.unwrapped
        keypoints.append(u.get_keypoints(u._block_shapes).flatten().astype(np.float64))
        if not plan:
            plan = list(expert.plan(env))
        obs, _, terminated, *_ = env.step(np.asarray(plan.pop(0), dtype=np.float64))
        if terminated:  # solved: start the next episode, as a robot would be reset
            obs, _ = env.reset(seed=seed + len(frames))
            plan = []
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
