"""Observation histories from a rosbag2 file, through the node's own preprocessing.

Calibration (``bac calibrate --source BAG``) must see exactly what the node will see:
same image conversion, same joint mapping by name, same time sync.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from bac_ros.node.conversions import ImageConverter, InputError, JointStateMapper, stamp_s
from bac_ros.node.obs_buffer import ObservationBuffer


def iter_bag_observations(bag: str | Path, policy, image_topics: list[str] | None = None,
                          joint_topic: str = "/joint_states",
                          tolerance_s: float = 0.03) -> Iterator[dict]:
    """Yield one history dict (1, To, *shape) per camera frame that completes a history."""
    from rclpy.serialization import deserialize_message
    from rosidl_runtime_py.utilities import get_message

    from bac_ros.node.replay import read_bag

    pc = policy.config
    rgb, low = pc.shape_meta.rgb_keys, pc.shape_meta.low_dim_keys
    image_topics = image_topics or ["/camera/image_raw"][: len(rgb)]
    if len(image_topics) < len(rgb):
        raise ValueError(f"the policy has cameras {rgb}; give as many image topics")
    cam_key = dict(zip(image_topics, rgb))
    topics = {t: t for t in image_topics}
    if low:
        topics[joint_topic] = joint_topic
    messages = read_bag(bag, topics)
    convs = {t: ImageConverter(pc.shape_meta.obs[k].shape[1:]) for t, k in cam_key.items()}
    mapper = JointStateMapper({k: pc.obs_low_dim_names.get(k) or [] for k in low})
    sources = [f"camera:{k}" for k in rgb] + (["joints"] if low else [])
    buf = ObservationBuffer(sources, pc.n_obs_steps, pc.control_period_s, tolerance_s,
                            history_s=10.0, max_future_s=1e9)
    classes = {}
    for _, topic, msgtype, raw in messages:
        cls = classes.setdefault(msgtype, get_message(msgtype))
        msg = deserialize_message(raw, cls)
        t = stamp_s(msg.header.stamp)
        try:
            if topic in cam_key:
                key = cam_key[topic]
                arr = (convs[topic].from_compressed(msg) if msgtype.endswith("CompressedImage")
                       else convs[topic].from_image(msg))
                buf.add(f"camera:{key}", t, {key: arr}, now_s=t, received_s=0.0)
                hist = buf.latest()
                if hist is not None and hist.stamp_s == t:
                    yield hist.obs
            else:
                buf.add("joints", t, mapper(msg), now_s=t, received_s=0.0)
        except InputError:
            continue  # the node would drop it too
