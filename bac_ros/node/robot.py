"""One robot served by the policy node: its topics, observation history, chunk queue and
statistics (no ROS here: the node creates the subscriptions and publishers it names).

A node serves one robot (``robots`` empty: the topics exactly as configured, outputs under
``~/``) or several, each under its own name: inputs ``/<name>/<topic>``, outputs
``~/<name>/<output>``. Everything a robot's command stream depends on lives here, so one
robot's silent camera, stale frames or rejected chunk never touches another's stream; what
robots share is the model and the inference worker, which runs the chunks that are due
together as one batched forward.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from bac_ros.node.handover import ActionScheduler
from bac_ros.node.obs_buffer import ObservationBuffer

# Seed stride between robots: robot i draws seed + i * stride + chunk_id, so two robots never
# share a noise stream (chunk ids would have to differ by a million first).
SEED_STRIDE = 1_000_003


def input_topic(robot: str, topic: str) -> str:
    """``topic`` for ``robot``: under ``/<robot>`` ('' = the topic as given). A relative topic
    stays relative to the node's namespace (``<robot>/<topic>``)."""
    if not robot:
        return topic
    return f"/{robot}{topic}" if topic.startswith("/") else f"{robot}/{topic}"


def output_topic(robot: str, name: str) -> str:
    """The node's private output ``name`` for ``robot`` (``~/name`` or ``~/<robot>/name``)."""
    return f"~/{robot}/{name}" if robot else f"~/{name}"


@dataclass
class RobotChannel:
    name: str  # '' when the node serves one robot
    index: int
    buffer: ObservationBuffer
    actions: ActionScheduler
    latency_window: int
    image_topics: dict[str, str] = field(default_factory=dict)  # rgb key -> resolved topic
    joint_topic: str = ""
    pub_chunk: object = None
    pub_latency: object = None
    pub_traj: object = None
    pub_cmd: object = None
    counters: collections.Counter = field(default_factory=collections.Counter)
    chunk_id: int = 0
    last_trigger_s: float = -1e9
    serving: bool = False  # command stream state, logged on transitions
    pending: bool = False  # triggered, waiting for the inference worker
    in_flight: bool = False  # its chunk is being computed
    armed: bool = False  # due within a frame: start at the next complete observation
    warning: str = ""
    diag_prev: collections.Counter = field(default_factory=collections.Counter)  # at last status

    def __post_init__(self) -> None:
        self.latencies: collections.deque = collections.deque(maxlen=self.latency_window)
        self.chunk_times: collections.deque = collections.deque(maxlen=self.latency_window)

    @property
    def label(self) -> str:
        """For log lines: '' or 'robot r1: '."""
        return f"robot {self.name}: " if self.name else ""

    def seed(self, base_seed: int, chunk_id: int) -> int:
        return base_seed + self.index * SEED_STRIDE + chunk_id

    def set_latency_window(self, n: int) -> None:
        self.latencies = collections.deque(self.latencies, maxlen=n)
        self.chunk_times = collections.deque(self.chunk_times, maxlen=n)

    def drop_plan(self) -> None:
        """Drop every queued action and the replanning state (a deactivation: nothing planned
        before it is sent after it)."""
        self.actions.clear()
        self.last_trigger_s = -1e9
        self.serving = self.armed = False

    def reset(self) -> None:
        """Forget the history too (a clock jump: every stamp belongs to another time line)."""
        self.buffer.clear()
        self.drop_plan()
