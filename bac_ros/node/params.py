"""NodeConfig: the single source of the node's defaults, ranges and descriptions.

ROS parameters are declared from these fields (dots in ROS names map to underscores
here, e.g. ``bac.enabled`` <-> ``bac_enabled``); a runtime change builds a candidate
config and is rejected with this dataclass's own error when invalid.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from bac_ros.node.handover import MODES


def meta(description: str, read_only: bool = False, lo=None, hi=None, ros_name: str = ""):
    return {"description": description, "read_only": read_only, "range": (lo, hi),
            "ros_name": ros_name}


@dataclass
class NodeConfig:
    # -- model (read-only: changing them needs a restart) --------------------------------
    checkpoint: str = field(default="", metadata=meta(
        "policy checkpoint: .safetensors (bac_ros) or .ckpt (diffusion_policy)", True))
    allow_pickle_checkpoint: bool = field(default=False, metadata=meta(
        "allow full-pickle .ckpt loading (runs code in the file: trusted files only)", True))
    device: str = field(default="cpu", metadata=meta("cpu, cuda or cuda:N", True))
    dtype: str = field(default="float32", metadata=meta(
        "float32, float16 or bfloat16 (autocast on CUDA)", True))
    torch_threads: int = field(default=0, metadata=meta(
        "torch intra-op CPU threads (0 = half the cores, at least 1: the executor and the "
        "control timer need CPU too; torch's default of every core stalls under contention)",
        True, 0, 1024))
    torch_interop_threads: int = field(default=1, metadata=meta(
        "torch inter-op CPU threads", True, 1, 1024))
    autostart: bool = field(default=True, metadata=meta(
        "lifecycle: configure and activate at start (false: wait in 'unconfigured' for "
        "`ros2 lifecycle set <node> configure` / `activate`)", True))
    max_callback_rate_hz: float = field(default=1000.0, metadata=meta(
        "cap on executor callbacks per second (messages, timers, services): input beyond it "
        "is dropped by DDS (best effort, newest kept), so a kHz driver cannot starve "
        "inference and the command stream of CPU", True, 10.0, 1e6))
    compile: bool = field(default=True, metadata=meta(
        "run the denoiser compiled when that is faster: configure compiles it (torch.compile/"
        "inductor, one graph per distinct compute mask; seconds to tens of seconds, never on the "
        "control path), times compiled against eager chunks and keeps the faster (logged; "
        "`compile_choice` on /diagnostics); a failed compile (no C++ compiler) runs eagerly. "
        "false: eager, nothing compiled (faster start). Schedules with more than 8 distinct "
        "masks run eagerly; a hot-swapped schedule serves eagerly while it compiles in the "
        "background", True))
    warmup_iterations: int = field(default=2, metadata=meta(
        "inferences run at start to warm up the device", True, 0, 100))
    seed: int = field(default=0, metadata=meta(
        "noise seed; every chunk draws its noise from seed + chunk_id (reproducible)", True,
        0, 2**31 - 1))
    # -- BAC --------------------------------------------------------------------------------
    schedule: str = field(default="", metadata=meta(
        "BAC cache schedule file from `bac calibrate` ('' = full compute); settable at runtime: "
        "validated against the running policy (fingerprint, sampler, K) and swapped between "
        "chunks, or refused with the reason while the old one keeps serving"))
    bac_enabled: bool = field(default=True, metadata=meta(
        "use the BAC schedule (switchable at runtime)", ros_name="bac.enabled"))
    bac_allow_fingerprint_mismatch: bool = field(default=False, metadata=meta(
        "experts: use a schedule calibrated for another checkpoint", True,
        ros_name="bac.allow_fingerprint_mismatch"))
    bac_fallback_to_full: bool = field(default=False, metadata=meta(
        "if the schedule is unusable, run full compute instead of refusing to start", True,
        ros_name="bac.fallback_to_full"))
    num_inference_steps: int = field(default=0, metadata=meta(
        "denoising steps K (0 = the checkpoint's); must equal the schedule's K while BAC is "
        "enabled", False, 0, 1000))
    # -- topics -------------------------------------------------------------------------------
    robots: list[str] = field(default_factory=list, metadata=meta(
        "serve several robots from one node ([] = one robot on the topics as given): one name "
        "per robot; robot r's inputs are the topics below under /r (`/r/camera/image_raw`), "
        "its outputs ~/r/... (`~/r/command`); robots whose chunks are due together share one "
        "batched forward. Robot i draws its noise from seed + i * 1000003 + chunk_id", True))
    image_topics: list[str] = field(default_factory=lambda: ["/camera/image_raw"], metadata=meta(
        "sensor_msgs/Image topics, one per rgb observation key in shape_meta order", True))
    compressed_images: bool = field(default=False, metadata=meta(
        "subscribe sensor_msgs/CompressedImage on the image topics instead", True))
    joint_state_topic: str = field(default="/joint_states", metadata=meta(
        "sensor_msgs/JointState topic for the low-dim observation keys", True))
    qos_reliable: bool = field(default=False, metadata=meta(
        "RELIABLE input QoS (default: sensor-data QoS, best effort)", True))
    command_type: str = field(default="joint_state", metadata=meta(
        "control stream message: joint_state, float64_multi_array or none", True))
    publish_trajectory: bool = field(default=True, metadata=meta(
        "also publish trajectory_msgs/JointTrajectory (joint_trajectory_controller)", True))
    # -- timing -------------------------------------------------------------------------------
    control_rate_hz: float = field(default=10.0, metadata=meta(
        "rate of the command stream", False, 0.5, 1000.0))
    n_execute: int = field(default=0, metadata=meta(
        "actions executed per chunk after it arrives (0 = the policy's n_action_steps); the "
        "slots already due on arrival are skipped, not counted", False, 0, 1000))
    replan_mode: str = field(default="latency", metadata=meta(
        "when to start the next inference: latency (when the time left in the current chunk "
        "falls below the recent p95 inference latency + replan_margin_ms) or remaining "
        "(replan_remaining actions left); replan_rate_hz > 0 overrides both"))
    replan_on_fresh_observation: bool = field(default=True, metadata=meta(
        "latency mode: once the next inference is due within one frame period of the anchor "
        "input (the first camera), start it when the next complete observation arrives "
        "instead of at the control tick, so the chunk is computed from a frame milliseconds "
        "old rather than up to a frame period old"))
    batch_window_ms: float = field(default=10.0, metadata=meta(
        "several robots: when one robot's chunk starts, wait up to this long for the robots "
        "due within a frame to receive it, so their chunks share the batched forward (0 = "
        "never wait)", False, 0.0, 1000.0))
    replan_margin_ms: float = field(default=30.0, metadata=meta(
        "latency mode: safety margin added to the p95 latency", False, 0.0, 10000.0))
    replan_remaining: int = field(default=2, metadata=meta(
        "remaining mode: start the next inference when this many actions of the current chunk "
        "remain", False, 0, 1000))
    replan_rate_hz: float = field(default=0.0, metadata=meta(
        "fixed replanning rate instead of the latency / remaining trigger (0 = off)", False,
        0.0, 1000.0))
    handover: str = field(default="replace", metadata=meta(
        "chunk hand-over: replace, temporal_ensemble, blend or rtc (real-time chunking: the "
        "actions due while a chunk is computed are fixed in it by inpainting)"))
    ensemble_decay: float = field(default=0.01, metadata=meta(
        "temporal_ensemble weight decay m (ACT)", False, 0.0, 10.0))
    blend_steps: int = field(default=3, metadata=meta(
        "blend: cross-fade length in control ticks", False, 1, 100))
    max_obs_age_s: float = field(default=0.5, metadata=meta(
        "never act on observations older than this", False, 0.01, 60.0))
    sync_tolerance_s: float = field(default=0.03, metadata=meta(
        "max stamp distance when matching cameras and joint states", False, 0.0, 1.0))
    obs_period_s: float = field(default=0.0, metadata=meta(
        "spacing of the n_obs_steps frames (0 = the policy's control period)", True, 0.0, 10.0))
    input_timeout_s: float = field(default=2.0, metadata=meta(
        "/diagnostics warns, naming the topics, when a subscribed topic is silent this long",
        False, 0.1, 3600.0))
    max_future_stamp_s: float = field(default=0.05, metadata=meta(
        "reject stamps further than this in the future", False, 0.0, 10.0))
    clock_jump_threshold_s: float = field(default=1.0, metadata=meta(
        "a ROS clock jump forward by more than this (or any jump back) resets the observation "
        "history and queued actions", True, 0.001, 3600.0))
    max_message_mb: float = field(default=64.0, metadata=meta(
        "reject input messages larger than this (image data, joint arrays)", True, 0.001,
        4096.0))
    latency_window: int = field(default=100, metadata=meta(
        "inferences in the rolling p50/p95/p99", False, 1, 100000))
    # -- safety -------------------------------------------------------------------------------
    action_min: list[float] = field(default_factory=list, metadata=meta(
        "per-dimension lower action limits ([] = none)"))
    action_max: list[float] = field(default_factory=list, metadata=meta(
        "per-dimension upper action limits ([] = none)"))
    limit_mode: str = field(default="clamp", metadata=meta(
        "out-of-limit actions: clamp, or reject the chunk"))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            problem = range_problem(f, getattr(self, f.name))
            if problem:
                raise ValueError(f"`{ros_name(f)}` {problem}.")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"`dtype` must be float32, float16 or bfloat16. Got {self.dtype!r}.")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"`device` must be cpu, cuda or cuda:N. Got {self.device!r}.")
        if self.replan_mode not in ("latency", "remaining"):
            raise ValueError("`replan_mode` must be latency or remaining. Got "
                             f"{self.replan_mode!r}.")
        if self.handover not in MODES:
            raise ValueError(f"`handover` must be one of {MODES}. Got {self.handover!r}.")
        if self.command_type not in ("joint_state", "float64_multi_array", "none"):
            raise ValueError("`command_type` must be joint_state, float64_multi_array or none. "
                             f"Got {self.command_type!r}.")
        if self.limit_mode not in ("clamp", "reject"):
            raise ValueError(f"`limit_mode` must be clamp or reject. Got {self.limit_mode!r}.")
        import math

        bad = [r for r in self.robots if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", r)]
        if bad:
            raise ValueError(f"`robots` must be ROS name tokens (a letter, then letters, digits "
                             f"or _), one per robot. Got {bad[:3]}.")
        if len(set(self.robots)) != len(self.robots):
            raise ValueError(f"`robots` has duplicates: {self.robots}.")
        if len(self.robots) > 64:
            raise ValueError(f"`robots` names {len(self.robots)} robots; at most 64 per node.")
        for name in ("action_min", "action_max"):
            bad = [v for v in getattr(self, name) if not math.isfinite(v)]
            if bad:
                raise ValueError(f"`{name}` must be finite numbers (NaN would disable or poison "
                                 f"the limits). Got {bad[:3]}.")
        if len(self.action_min) != len(self.action_max):
            raise ValueError("`action_min` and `action_max` must have the same length "
                             f"({len(self.action_min)} vs {len(self.action_max)}).")
        if any(lo > hi for lo, hi in zip(self.action_min, self.action_max)):
            raise ValueError("`action_min` must be <= `action_max` in every dimension.")

    @property
    def effective_torch_threads(self) -> int:
        import os

        return self.torch_threads or max(1, (os.cpu_count() or 2) // 2)

    def replace(self, **changes: Any) -> NodeConfig:
        return dataclasses.replace(self, **changes)


def range_problem(f: dataclasses.Field, value: Any) -> str | None:
    """Why ``value`` is outside the field's declared range, or None."""
    lo, hi = f.metadata["range"]
    if lo is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if lo <= value <= hi else f"must be in [{lo}, {hi}], got {value}"


def ros_name(f: dataclasses.Field) -> str:
    return f.metadata["ros_name"] or f.name


def parameter_table() -> list[tuple[str, str, Any, bool, str]]:
    """(ros name, field name, default, read_only, description) for docs and declaration."""
    default = NodeConfig()
    return [(ros_name(f), f.name, getattr(default, f.name), f.metadata["read_only"],
             f.metadata["description"]) for f in dataclasses.fields(NodeConfig)]
