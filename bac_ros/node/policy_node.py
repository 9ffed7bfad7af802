"""The bac_ros policy node: observations in, action chunks out at control rate.

A managed (lifecycle) node: configure loads the policy and schedule, warms up and creates the
subscriptions and publishers; activate starts the inference worker and the command stream;
deactivate stops them and drops every queued action (no stale command survives); cleanup
frees the model. A failed transition goes through error processing (the reason is logged
and on /diagnostics) back to unconfigured. With ``autostart`` (default) the node configures
and activates itself, so one `ros2 launch` still runs it.

Threads: one executor thread serves subscriptions, the control-rate timer and diagnostics
(every callback is short: a conversion, a lookup, a publish); inference runs on a dedicated
worker thread (one at a time, newest observation wins), so no callback ever waits on the
GPU. A SingleThreadedExecutor is deliberate: measured here, rclpy's MultiThreadedExecutor
spent so long rebuilding wait sets that best-effort camera/joint messages were dropped
(28 of 100 joint states received at 100 Hz), while the single-threaded one kept up. Its
loop (``spin_node``) is capped at ``max_callback_rate_hz``: each callback costs the
executor ~0.1-0.3 ms of Python (and the GIL), so an uncapped kHz input flood starved the
inference worker.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
import traceback

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import JumpThreshold
from rclpy.duration import Duration
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from bac_ros.msg import ActionChunk, InferenceLatency
from bac_ros.node.conversions import ImageConverter, InputError, JointStateMapper, stamp_s
from bac_ros.node.handover import ActionScheduler, Chunk
from bac_ros.node.obs_buffer import ObservationBuffer
from bac_ros.node.params import NodeConfig, range_problem, ros_name
from bac_ros.node.runtime import ChunkRejected, ConfigureError, PolicyRuntime

_PTYPES = {bool: Parameter.Type.BOOL, int: Parameter.Type.INTEGER, float: Parameter.Type.DOUBLE,
           str: Parameter.Type.STRING, "list[str]": Parameter.Type.STRING_ARRAY,
           "list[float]": Parameter.Type.DOUBLE_ARRAY}


def to_stamp(t_s: float):
    from builtin_interfaces.msg import Time

    sec = int(np.floor(t_s))
    return Time(sec=sec, nanosec=int(round((t_s - sec) * 1e9)) % 1_000_000_000)


class PolicyNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__("bac_policy", **kwargs)
        self._fields = {ros_name(f): f for f in dataclasses.fields(NodeConfig)}
        self.cfg = self._declare_parameters()
        self.counters = collections.Counter()
        self.warning = ""
        self._recent_errors = 0
        self._chunk_id = 0
        self._latencies: collections.deque = collections.deque(maxlen=self.cfg.latency_window)
        self._warmup_ms: list[float] = []
        self._chunk_times: collections.deque = collections.deque(maxlen=self.cfg.latency_window)
        self._last_trigger_s = -1e9
        self._serving = False  # command stream state, logged on transitions
        self._last_reject_log_s: dict[str, float] = {}
        self._timeline = 0  # bumped by ROS clock jumps
        self.runtime: PolicyRuntime | None = None
        self._active = False
        self._entities: list = []  # subscriptions, publishers, timers made by configure
        self._transition_error = ""
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._busy = False
        if self.cfg.autostart:
            self.trigger_configure()
            if self.runtime is None:  # main() reports "cannot start: <reason>", exit 2
                raise ConfigureError(self._transition_error or "configure failed")
            self.trigger_activate()

    @property
    def lifecycle_state(self) -> str:
        return self._state_machine.current_state[1]

    # -- lifecycle transitions ----------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("configure", self._configure)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("activate", self._activate)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("deactivate", self._deactivate)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("cleanup", self._cleanup)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("shutdown", self._cleanup)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Back to a clean 'unconfigured': a corrected configuration can be retried.
        try:
            self._cleanup()
        except Exception as exc:  # noqa: BLE001 - finalize rather than stay half-configured
            self.get_logger().error(f"error processing failed: {exc!r}")
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _transition(self, name: str, fn) -> TransitionCallbackReturn:
        try:
            fn()
        except (ConfigureError, ValueError, OSError) as exc:
            self._transition_error = f"{name} failed: {exc}"
            self.get_logger().error(self._transition_error)
            return TransitionCallbackReturn.ERROR
        except Exception as exc:  # noqa: BLE001 - a bug: report it with the traceback
            self._transition_error = f"{name} failed: {exc!r}"
            self.get_logger().error(f"{self._transition_error}\n{traceback.format_exc()}")
            return TransitionCallbackReturn.ERROR
        self._transition_error = ""
        self.get_logger().info(f"lifecycle: {name} done")
        return TransitionCallbackReturn.SUCCESS

    # -- parameters ---------------------------------------------------------------------------
    def _declare_parameters(self) -> NodeConfig:
        default = NodeConfig()
        values = {}
        for name, f in self._fields.items():
            lo, hi = f.metadata["range"]
            d = ParameterDescriptor(description=f.metadata["description"],
                                    read_only=f.metadata["read_only"])
            value = getattr(default, f.name)
            if isinstance(value, bool):
                pass
            elif isinstance(value, int) and lo is not None:
                d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
            elif isinstance(value, float) and lo is not None:
                d.floating_point_range = [FloatingPointRange(from_value=float(lo),
                                                             to_value=float(hi), step=0.0)]
            # `-p control_rate_hz:=20` is an integer to ROS: take it as 20.0, as a runtime
            # `ros2 param set` is (rclpy would refuse it with a traceback).
            given = self._parameter_overrides.get(name)
            if isinstance(value, float) and given is not None and \
                    given.type_ == Parameter.Type.INTEGER:
                self._parameter_overrides[name] = Parameter(name, Parameter.Type.DOUBLE,
                                                            float(given.value))
            try:
                if isinstance(value, list) and not value:
                    ptype = Parameter.Type.DOUBLE_ARRAY if "float" in str(f.type) else \
                        Parameter.Type.STRING_ARRAY
                    p = self.declare_parameter(name, ptype, d)
                else:
                    p = self.declare_parameter(name, value, d)
            except ParameterException as exc:
                raise ConfigureError(f"parameter `{name}`: {str(exc)[:300]} (see "
                                     "`policy_node --help` for its type and range)") from None
            values[f.name] = p.value if p.value is not None else []
        cfg = NodeConfig(**values)
        self.add_pre_set_parameters_callback(self._pre_set_parameters)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        return cfg

    def _pre_set_parameters(self, params: list[Parameter]) -> list[Parameter]:
        """Runs before rclpy's own descriptor checks (read-only, type, range), which reject
        without calling any node callback: report those here too, so every rejected change is
        logged and counted. Integers given for float parameters (`ros2 param set ... 20`) are
        converted instead of being refused for their type."""
        out = []
        for p in params:
            f = self._fields.get(p.name)
            if f is None:
                out.append(p)
                continue
            current = getattr(self.cfg, f.name)
            if isinstance(current, float) and p.type_ == Parameter.Type.INTEGER:
                p = Parameter(p.name, Parameter.Type.DOUBLE, float(p.value))
            problem = None
            if f.metadata["read_only"]:
                problem = "is read-only: set it at launch and restart the node"
            elif p.type_ != _PTYPES.get(type(current), p.type_) and not (
                    isinstance(current, list) and p.type_ in (Parameter.Type.DOUBLE_ARRAY,
                                                              Parameter.Type.STRING_ARRAY)):
                problem = f"expects {type(current).__name__}, got {p.type_.name.lower()}"
            else:
                problem = range_problem(f, p.value)
            if problem:
                self.counters["rejected_parameters"] += 1
                self.warning = f"parameter `{p.name}` {problem}"
                self.get_logger().warning(f"parameter change rejected: {self.warning}")
            out.append(p)
        return out

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        changes = {}
        for p in params:
            f = self._fields.get(p.name)
            if f is None:
                continue
            value = p.value
            if isinstance(getattr(self.cfg, f.name), float) and isinstance(value, int) \
                    and not isinstance(value, bool):
                value = float(value)
            changes[f.name] = list(value) if isinstance(value, (list, tuple)) else value
        staged = None
        try:
            cand = self.cfg.replace(**changes)
            self._check_runtime_constraints(cand)
            if "schedule" in changes and getattr(self, "runtime", None) is not None:
                staged = self._stage_schedule(cand)
        except (ValueError, TypeError) as exc:
            self.counters["rejected_parameters"] += 1
            reason = str(exc)
            if len(reason) > 500:  # a megabyte-long bad value is not echoed in full
                reason = reason[:500] + f"... ({len(reason)} characters, truncated)"
            self.get_logger().warning(f"parameter change rejected: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        self.cfg = cand
        self._apply_live(cand, changes)
        if staged is not None:
            self.runtime.swap_schedule(staged)
            self.counters["schedule_swaps"] += 1
            sid = staged[0].schedule_id if staged[0] else "off (full compute)"
            self.get_logger().info(f"schedule hot-swapped: {sid} from {cand.schedule!r} "
                                   "(takes effect from the next chunk)")
        return SetParametersResult(successful=True)

    def _stage_schedule(self, cand: NodeConfig):
        """Validate a new schedule against the running policy; the old one keeps serving if
        this raises. Its K and sampler must be the running ones (no re-warm-up mid-run)."""
        from bac_ros.bac.schedule import ScheduleError

        try:
            return self.runtime.load_candidate(cand.schedule)
        except ScheduleError as exc:
            raise ValueError(f"schedule not swapped, the active one keeps serving: "
                             f"{str(exc)[:500]}") from exc

    def _apply_live(self, cand: NodeConfig, changes: dict) -> None:
        """Push accepted runtime changes into the helpers that cached the old values."""
        if hasattr(self, "actions"):
            self.actions.configure(cand.handover, cand.ensemble_decay, cand.blend_steps)
        if hasattr(self, "buffer"):
            self.buffer.tolerance_s = cand.sync_tolerance_s
            self.buffer.max_future_s = cand.max_future_stamp_s
        if "latency_window" in changes:
            self._latencies = collections.deque(self._latencies, maxlen=cand.latency_window)
            self._chunk_times = collections.deque(self._chunk_times, maxlen=cand.latency_window)
        if "control_rate_hz" in changes and getattr(self, "_control_timer", None) is not None:
            self._control_timer.timer_period_ns = int(1e9 / cand.control_rate_hz)
            self._control_timer.reset()

    def _check_runtime_constraints(self, cand: NodeConfig) -> None:
        rt = getattr(self, "runtime", None)
        if rt is None:
            return
        steps = cand.num_inference_steps or rt.config.scheduler.num_inference_steps
        train_steps = rt.config.scheduler.num_train_timesteps
        if steps > train_steps:
            raise ValueError(f"num_inference_steps={steps} exceeds the checkpoint's "
                             f"num_train_timesteps={train_steps}; use 1..{train_steps}")
        if cand.bac_enabled and rt.schedule is not None and cand.num_inference_steps and \
                steps != rt.schedule.num_steps:
            raise ValueError(f"num_inference_steps={steps} but the BAC schedule was calibrated "
                             f"for K={rt.schedule.num_steps}; disable bac.enabled first")
        if cand.action_min and len(cand.action_min) != rt.config.shape_meta.action_dim:
            raise ValueError(f"action limits need {rt.config.shape_meta.action_dim} values")
        n_exec = cand.n_execute or rt.config.n_action_steps
        if n_exec > rt.config.horizon - rt.config.n_obs_steps + 1:
            raise ValueError(f"n_execute={n_exec} exceeds the predicted actions available "
                             f"({rt.config.horizon - rt.config.n_obs_steps + 1})")

    # -- what the transitions do ---------------------------------------------------------------
    def _configure(self) -> None:
        cfg, log = self.cfg, self.get_logger()
        self.runtime = PolicyRuntime(cfg, log=log.warning)
        pc = self.runtime.config
        self._check_runtime_constraints(cfg)
        if cfg.warmup_iterations or cfg.compile:
            t = time.perf_counter()
            self._warmup_ms = self.runtime.warmup(cfg.warmup_iterations)
            last = f"{self._warmup_ms[-1]:.0f} ms" if self._warmup_ms else "-"
            log.info(f"warm-up: {cfg.warmup_iterations} inferences in "
                     f"{1000 * (time.perf_counter() - t):.0f} ms (last {last}); torch "
                     f"threads {torch.get_num_threads()} intra-op; compiled {cfg.compile}")
        rgb_keys, low_keys = pc.shape_meta.rgb_keys, pc.shape_meta.low_dim_keys
        if len(cfg.image_topics) < len(rgb_keys):
            raise ConfigureError(f"the policy has {len(rgb_keys)} cameras {rgb_keys} but only "
                                 f"{len(cfg.image_topics)} image_topics are configured")
        names = {k: pc.obs_low_dim_names.get(k) for k in low_keys}
        missing = [k for k, v in names.items() if not v]
        if missing:
            raise ConfigureError(f"the checkpoint does not name the joints of {missing} "
                                 "(PolicyConfig.obs_low_dim_names); re-export it with names")
        max_bytes = int(cfg.max_message_mb * 2**20)
        self.joint_mapper = JointStateMapper(names, max_bytes=max_bytes)
        period = cfg.obs_period_s or pc.control_period_s
        sources = [f"camera:{k}" for k in rgb_keys] + (["joints"] if low_keys else [])
        self.buffer = ObservationBuffer(sources, pc.n_obs_steps, period, cfg.sync_tolerance_s,
                                        max_future_s=cfg.max_future_stamp_s)
        self.actions = ActionScheduler(cfg.handover, cfg.ensemble_decay, cfg.blend_steps)
        self.action_names = pc.action_names or [f"a{i}" for i in range(pc.shape_meta.action_dim)]
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE) if cfg.qos_reliable \
            else qos_profile_sensor_data
        self._inputs = MutuallyExclusiveCallbackGroup()
        # Last arrival (monotonic) per subscribed topic: /diagnostics names silent ones.
        self._image_topic_of = {k: self.resolve_topic_name(t)
                                for k, t in zip(rgb_keys, cfg.image_topics)}
        self._joint_topic = self.resolve_topic_name(cfg.joint_state_topic)
        start = time.monotonic()
        self._last_input = {t: start for t in list(self._image_topic_of.values()) +
                            ([self._joint_topic] if low_keys else [])}
        self._ever_received: set[str] = set()
        for key, topic in zip(rgb_keys, cfg.image_topics):
            conv = ImageConverter(pc.shape_meta.obs[key].shape[1:], max_bytes=max_bytes)
            msg_type = CompressedImage if cfg.compressed_images else Image
            self._entities.append(self.create_subscription(
                msg_type, topic, lambda m, k=key, c=conv: self._on_image(m, k, c), qos,
                callback_group=self._inputs))
        if low_keys:
            self._entities.append(self.create_subscription(
                JointState, cfg.joint_state_topic, self._on_joints, qos,
                callback_group=self._inputs))
        self.pub_chunk = self._keep(self.create_publisher(ActionChunk, "~/action_chunk", 10))
        self.pub_latency = self._keep(self.create_publisher(InferenceLatency,
                                                            "~/inference_latency", 10))
        self.pub_diag = self._keep(self.create_publisher(DiagnosticArray, "/diagnostics", 10))
        self.pub_traj = self._keep(self.create_publisher(JointTrajectory, "~/joint_trajectory",
                                                         10)) if cfg.publish_trajectory else None
        self.pub_cmd = None
        if cfg.command_type == "joint_state":
            self.pub_cmd = self._keep(self.create_publisher(JointState, "~/command", 10))
        elif cfg.command_type == "float64_multi_array":
            self.pub_cmd = self._keep(self.create_publisher(Float64MultiArray, "~/command", 10))
        # Simulation resets and `ros2 bag play --clock` loops move ROS time back (or far
        # ahead): every stamp in the history and every queued action then belongs to another
        # time line. Without a reset, new samples would be "out of order" forever.
        threshold = JumpThreshold(
            min_forward=Duration(nanoseconds=int(self.cfg.clock_jump_threshold_s * 1e9)),
            min_backward=Duration(nanoseconds=-1), on_clock_change=True)
        self._jump_handle = self.get_clock().create_jump_callback(
            threshold, post_callback=self._on_clock_jump)
        # Diagnostics in every configured state: an inactive node says so.
        self._keep(self.create_timer(1.0, lambda: self._guarded(
            "diagnostics_errors", self._publish_diagnostics),
            callback_group=MutuallyExclusiveCallbackGroup()))
        log.info(f"configured {pc.name} ({self.runtime.policy.fingerprint}) on {cfg.device}, "
                 f"K={self.runtime.policy.num_inference_steps}, BAC "
                 f"{'schedule ' + self.runtime.schedule.schedule_id if self.runtime.schedule else 'off'}"
                 f", inputs {cfg.image_topics[:len(rgb_keys)]} + "
                 f"{cfg.joint_state_topic if low_keys else '-'}")

    def _keep(self, entity):
        self._entities.append(entity)
        return entity

    def _activate(self) -> None:
        if self.runtime is None:
            raise ConfigureError("activate before configure")
        self._control_timer = self.create_timer(
            1.0 / self.cfg.control_rate_hz, self._on_control_tick,
            callback_group=MutuallyExclusiveCallbackGroup())
        self._wake.clear()
        self._stop.clear()
        self._busy = False
        self._active = True
        self._worker = threading.Thread(target=self._worker_loop, name="bac_inference",
                                        daemon=True)
        self._worker.start()

    def _deactivate(self) -> None:
        """Stop the command stream and the worker; queued actions are dropped, so nothing
        planned before the pause is ever sent after it."""
        self._active = False
        if getattr(self, "_control_timer", None) is not None:
            self.destroy_timer(self._control_timer)
            self._control_timer = None
        self._stop_worker()
        if hasattr(self, "actions"):
            self.actions.clear()
        self._last_trigger_s = -1e9
        self._serving = False

    def _stop_worker(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=30.0)  # an inference in flight finishes (then dropped)
            self._worker = None

    def _cleanup(self) -> None:
        """Back to unconfigured: stop everything, destroy what configure made, free the model."""
        self._deactivate()
        if getattr(self, "_jump_handle", None) is not None:
            self._jump_handle.unregister()
            self._jump_handle = None
        for e in self._entities:
            destroy = {"Subscription": self.destroy_subscription,
                       "Publisher": self.destroy_publisher,
                       "Timer": self.destroy_timer}.get(type(e).__name__)
            if destroy is not None:
                destroy(e)
        self._entities = []
        self.pub_cmd = self.pub_traj = None
        self.runtime = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _on_clock_jump(self, jump) -> None:
        self._timeline += 1  # an inference in flight now belongs to the old time line
        self.buffer.clear()
        self.actions.clear()
        self._last_trigger_s = -1e9
        self.counters["clock_jumps"] += 1
        self.warning = (f"ROS clock jumped by {jump.delta.nanoseconds * 1e-9:+.3f} s "
                        f"({jump.clock_change.name}): observation history and queued actions "
                        "cleared")
        self.get_logger().warning(self.warning)

    def shutdown(self) -> None:
        self._active = False
        self._stop_worker()

    # -- inputs -------------------------------------------------------------------------------
    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _reject(self, err: InputError) -> None:
        self.counters["rejected_inputs"] += 1
        self.counters[f"rejected.{err.kind}"] += 1
        self.warning = str(err)
        # Throttled per kind (rclpy throttles per call site): a flood of one problem must not
        # hide the first report of another.
        now = time.monotonic()
        if now - self._last_reject_log_s.get(err.kind, -1e9) >= 1.0:
            self._last_reject_log_s[err.kind] = now
            self.get_logger().warning(f"input rejected ({err.kind}): {err}")

    def _mark_input(self, topic: str) -> None:
        self._last_input[topic] = time.monotonic()
        self._ever_received.add(topic)

    def silent_topics(self, now_mono: float | None = None) -> list[str]:
        """Subscribed topics with no message for input_timeout_s (any message counts, even a
        rejected one: this is about wiring, not content)."""
        now_mono = time.monotonic() if now_mono is None else now_mono
        return sorted(t for t, last in self._last_input.items()
                      if now_mono - last > self.cfg.input_timeout_s)

    def _on_image(self, msg, key: str, conv: ImageConverter) -> None:
        self._mark_input(self._image_topic_of[key])
        try:
            stamp = stamp_s(msg.header.stamp)
            if self._decimated(f"camera:{key}", stamp):
                return
            arr = conv.from_compressed(msg) if isinstance(msg, CompressedImage) else \
                conv.from_image(msg)
            self.buffer.add(f"camera:{key}", stamp, {key: arr}, self._now_s(), time.monotonic())
        except InputError as err:
            self._reject(err)
        except Exception as exc:  # noqa: BLE001 - never let a callback kill the executor
            self._reject(InputError("internal", f"image callback failed: {exc!r}"))

    def _on_joints(self, msg: JointState) -> None:
        self._mark_input(self._joint_topic)
        try:
            stamp = stamp_s(msg.header.stamp)
            if self._decimated("joints", stamp):
                return
            self.buffer.add("joints", stamp, self.joint_mapper(msg), self._now_s(),
                            time.monotonic())
        except InputError as err:
            self._reject(err)
        except Exception as exc:  # noqa: BLE001
            self._reject(InputError("internal", f"joint callback failed: {exc!r}"))

    def _decimated(self, source: str, stamp: float) -> bool:
        """A sample within the buffer's min spacing of the newest kept one is dropped before
        any conversion: the history needs no more, and a kHz driver must not eat the
        executor (counted on /diagnostics as ``decimated_inputs``)."""
        if self.buffer.decimated(source, stamp):
            self.counters["decimated_inputs"] += 1
            return True
        return False

    # -- control stream -----------------------------------------------------------------------
    def _on_control_tick(self) -> None:
        self._guarded("control_tick_errors", self._control_tick)

    def _guarded(self, counter: str, fn) -> None:
        """Run a timer callback; an exception is logged and counted, never kills the executor."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - keep serving; diagnostics report the count
            self.counters[counter] += 1
            self.warning = f"{counter.replace('_', ' ')}: {exc!r}"
            self.get_logger().error(f"{self.warning}\n{traceback.format_exc()}",
                                    throttle_duration_sec=1.0)

    def _control_tick(self) -> None:
        self.counters["control_ticks"] += 1
        now = self._now_s()
        due = self.actions.action_at(now)
        if due is None:
            self.counters["hold_ticks"] += 1
            if self._serving:  # say so once per transition, not once per tick
                self._serving = False
                self.get_logger().warning("command stream holding: no valid action is due "
                                          "(no fresh chunk; see ~/inference_latency)",
                                          throttle_duration_sec=1.0)
        elif self.pub_cmd is not None:
            action = [float(v) for v in due[0]]
            if isinstance(self.pub_cmd.msg_type(), JointState):
                m = JointState(name=self.action_names, position=action)
                m.header.stamp = self.get_clock().now().to_msg()
            else:
                m = Float64MultiArray(data=action)
            self.pub_cmd.publish(m)
            self.counters["commands"] += 1
        if due is not None and not self._serving:
            self._serving = True
            self.get_logger().info(f"command stream serving chunk {due[1]}",
                                   throttle_duration_sec=1.0)
        if self.cfg.replan_rate_hz > 0:
            trigger = now - self._last_trigger_s >= 1.0 / self.cfg.replan_rate_hz
        elif self._busy:  # the chunk in flight answers this tick's need; re-check after it
            trigger = False
        elif self.cfg.replan_mode == "latency":
            trigger = self.actions.time_left_s(now) <= self.replan_lead_s()
        else:
            trigger = self.actions.remaining(now) <= self.cfg.replan_remaining
        if trigger:
            self._last_trigger_s = now
            self._wake.set()

    # -- inference worker ---------------------------------------------------------------------
    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            if not self._wake.wait(timeout=0.5):
                continue
            self._wake.clear()
            if self._stop.is_set():
                break
            self._busy = True
            try:
                self._infer_once()
            except Exception as exc:  # noqa: BLE001 - report, count, keep serving
                self.counters["inference_errors"] += 1
                self._recent_errors += 1
                self.warning = f"inference failed: {exc!r}"
                self.get_logger().error(f"inference failed: {exc!r}\n{traceback.format_exc()}")
                self._publish_latency_warning()
            finally:
                self._busy = False

    def replan_lead_s(self) -> float:
        """Latency mode: how long before the current chunk runs out the next inference must
        start so that, with latency below about half the chunk, the stream never holds: the
        p95 of the recent observation-to-chunk latencies (warm-up timings before the first
        chunk), plus one control period (the trigger is checked once per tick), plus the
        margin."""
        return self.latency_p95_s() + self.cfg.replan_margin_ms / 1000 + \
            1.0 / self.cfg.control_rate_hz

    def latency_p95_s(self) -> float:
        """p95 of the recent observation-to-chunk latencies (warm-up timings before the first
        chunk; 0 without either)."""
        lat = self._latencies or self._warmup_ms
        return float(np.percentile(np.asarray(lat), 95)) / 1000 if lat else 0.0

    def _infer_once(self) -> None:
        cfg = self.cfg  # one consistent snapshot per inference
        hist = self.buffer.latest()
        if hist is None:
            self._report_incomplete()
            return
        now = self._now_s()
        age_s = now - hist.stamp_s
        if age_s > cfg.max_obs_age_s:
            self.counters["stale_skips"] += 1
            self.warning = (f"stale observation: newest complete observation is {age_s:.3f} s old"
                            f" (max_obs_age_s={cfg.max_obs_age_s}); not acting")
            self.get_logger().warning(self.warning, throttle_duration_sec=1.0)
            self._publish_latency_warning(age_s)
            return
        rt = self.runtime
        if cfg.bac_enabled and rt.schedule is not None:
            rt.set_steps(rt.schedule.num_steps if not cfg.num_inference_steps
                         else cfg.num_inference_steps)
        else:
            rt.set_steps(cfg.num_inference_steps)
        chunk_id = self._chunk_id + 1
        timeline = self._timeline
        if getattr(self, "fault_injector", None) is not None:
            self.fault_injector(chunk_id)
        fixed = None
        if cfg.handover == "rtc":  # freeze what will run while this chunk is computed
            pc = rt.config
            fixed = self.actions.planned(hist.stamp_s, pc.control_period_s,
                                         pc.horizon - pc.n_obs_steps + 1,
                                         now + self.latency_p95_s() + cfg.replan_margin_ms / 1000)
            if fixed is not None:
                self.counters["rtc_fixed_actions"] += int(fixed[1].sum())
        try:
            res = rt.infer(hist.obs, seed=cfg.seed + chunk_id, use_bac=cfg.bac_enabled,
                           limits=(cfg.action_min, cfg.action_max), limit_mode=cfg.limit_mode,
                           fixed=fixed)
        except ChunkRejected as exc:
            self.counters["rejected_chunks"] += 1
            self.warning = str(exc)
            self.get_logger().error(f"chunk rejected: {exc}")
            self._publish_latency_warning(age_s)
            return
        if timeline != self._timeline:
            self.counters["dropped_after_clock_jump"] += 1
            self.get_logger().warning("chunk dropped: the ROS clock jumped during inference")
            return
        self._chunk_id = chunk_id
        self._recent_errors = 0
        self._publish_chunk(res, hist, chunk_id, cfg)

    def _report_incomplete(self) -> None:
        """No synced history. Before any input that is just waiting; once some sources
        publish, name the ones that are silent (a dead camera, joints far below rate)."""
        newest = {s: self.buffer.newest_stamp(s) for s in self.buffer.sources}
        if all(t is None for t in newest.values()):
            self.counters["waiting_for_inputs"] += 1
            return
        self.counters["unsynced_observation"] += 1
        silent = [s for s, t in newest.items() if t is None]
        self.warning = (f"no complete observation: no samples from {silent}" if silent else
                        "no complete observation: sources not within sync_tolerance_s="
                        f"{self.cfg.sync_tolerance_s} at the observation period (newest stamps "
                        f"{ {s: round(t, 3) for s, t in newest.items()} })")
        self.get_logger().warning(self.warning, throttle_duration_sec=1.0)
        self._publish_latency_warning()

    def _publish_chunk(self, res, hist, chunk_id: int, cfg: NodeConfig) -> None:
        if not self._active:  # deactivated during this inference: nothing planned then runs
            self.counters["dropped_inactive"] += 1
            return
        pc = self.runtime.config
        dt = pc.control_period_s
        publish_s = self._now_s()
        # n_execute counts from the chunk's arrival: the slots already due when it lands are
        # never played, so without this a 4-action chunk that took 0.22 s would serve 1-2
        # actions and the stream would hold (what the delay study in docs/results.md does too).
        late = max(0, math.ceil((publish_s - hist.stamp_s) / dt - 1e-6))
        n_exec = min((cfg.n_execute or pc.n_action_steps) + late, len(res.actions))
        prev_end = self.actions.exhausted_at()
        deadline_missed = prev_end is not None and publish_s > prev_end
        self.actions.add(Chunk(res.actions[:n_exec], hist.stamp_s, dt, chunk_id, publish_s))

        msg = ActionChunk(action_names=self.action_names, action_period_s=dt,
                          horizon=len(res.actions), action_dim=res.actions.shape[1],
                          n_execute=n_exec, chunk_id=chunk_id,
                          schedule_id=res.schedule_id)
        msg.header.stamp = to_stamp(hist.stamp_s)
        msg.header.frame_id = pc.name
        msg.first_action_time = to_stamp(hist.stamp_s)
        msg.actions = res.actions.reshape(-1).astype(np.float32)
        self.pub_chunk.publish(msg)
        if self.pub_traj is not None:
            traj = JointTrajectory(joint_names=self.action_names)
            traj.header.stamp = to_stamp(hist.stamp_s)
            for j in range(n_exec):
                pt = JointTrajectoryPoint(positions=[float(v) for v in res.actions[j]])
                pt.time_from_start.sec, frac = int(j * dt), j * dt - int(j * dt)
                pt.time_from_start.nanosec = int(frac * 1e9)
                traj.points.append(pt)
            self.pub_traj.publish(traj)

        total_ms = 1000 * (time.monotonic() - hist.received_s)
        total_ms = max(total_ms, res.preprocess_ms + res.denoise_ms + res.postprocess_ms)
        self._latencies.append(total_ms)
        self._chunk_times.append(time.monotonic())
        self.counters["chunks"] += 1
        if deadline_missed:
            self.counters["deadline_misses"] += 1
        lat = self._latency_msg(1000 * (publish_s - hist.stamp_s))
        lat.chunk_id = chunk_id
        lat.preprocess_ms, lat.denoise_ms = res.preprocess_ms, res.denoise_ms
        lat.postprocess_ms, lat.total_ms = res.postprocess_ms, total_ms
        lat.denoising_steps, lat.bac_enabled = res.steps, res.bac_used
        lat.blocks_computed, lat.blocks_reused = res.blocks_computed, res.blocks_reused
        lat.deadline_missed = deadline_missed
        lat.warning = ""
        self.pub_latency.publish(lat)

    def _latency_msg(self, age_ms: float = 0.0) -> InferenceLatency:
        lat = InferenceLatency(device=self.cfg.device, observation_age_ms=age_ms,
                               rejected_inputs=self.counters["rejected_inputs"],
                               stale_skips=self.counters["stale_skips"],
                               inference_errors=self.counters["inference_errors"],
                               rejected_chunks=self.counters["rejected_chunks"],
                               chunk_id=self._chunk_id, warning=self.warning)
        lat.header.stamp = self.get_clock().now().to_msg()
        if self._latencies:
            p50, p95, p99 = np.percentile(np.array(self._latencies), [50, 95, 99])
            lat.total_p50_ms, lat.total_p95_ms, lat.total_p99_ms = p50, p95, p99
        if len(self._chunk_times) >= 2:
            span = self._chunk_times[-1] - self._chunk_times[0]
            lat.achieved_rate_hz = (len(self._chunk_times) - 1) / span if span > 0 else 0.0
        return lat

    def _publish_latency_warning(self, age_s: float = 0.0) -> None:
        self.pub_latency.publish(self._latency_msg(1000 * age_s))

    # -- diagnostics --------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        c = self.counters
        problems = ("stale_skips", "rejected_inputs", "deadline_misses", "rejected_chunks",
                    "inference_errors", "rejected_parameters", "control_tick_errors",
                    "unsynced_observation", "clock_jumps", "diagnostics_errors")
        prev = getattr(self, "_diag_prev", collections.Counter())
        recent = {k: c[k] - prev[k] for k in problems if c[k] > prev[k]}
        self._diag_prev = collections.Counter({k: c[k] for k in problems})
        status = DiagnosticStatus(name="bac_ros: policy", hardware_id=self.cfg.device)
        silent = self.silent_topics()
        if self._recent_errors >= 3:
            status.level = DiagnosticStatus.ERROR
            status.message = f"repeated inference failures: {self.warning}"
        elif silent:
            never = [t for t in silent if t not in self._ever_received]
            status.level = DiagnosticStatus.WARN
            status.message = (
                f"no input for more than input_timeout_s={self.cfg.input_timeout_s} s on "
                f"{silent}" + (f" (never received: {never}; check the topic names / remaps "
                               "and that the drivers publish)" if never else "") +
                (f"; {self.warning} (last second: {recent})" if recent else ""))
        elif recent:
            status.level = DiagnosticStatus.WARN
            status.message = f"{self.warning} (last second: {recent})"
        elif not self._active:
            status.level = DiagnosticStatus.OK
            status.message = (f"{self.lifecycle_state} (lifecycle): configured, not publishing "
                              "commands; `ros2 lifecycle set <node> activate` to serve")
        else:
            status.level, status.message = DiagnosticStatus.OK, "serving"
            self.warning = ""
        lat = self._latency_msg()
        values = dict(c)
        values["lifecycle_state"] = self.lifecycle_state
        values["compiled"] = bool(self.runtime is not None and self.runtime.compiled)
        values.update(total_p50_ms=round(lat.total_p50_ms, 3), total_p99_ms=round(
            lat.total_p99_ms, 3), achieved_rate_hz=round(lat.achieved_rate_hz, 3),
            bac_enabled=self.cfg.bac_enabled and self.runtime.schedule is not None,
            schedule_id=self.runtime.schedule.schedule_id if self.runtime.schedule else "")
        status.values = [KeyValue(key=k, value=str(v)) for k, v in sorted(values.items())]
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(arr)


def print_help() -> None:
    from bac_ros.node.params import parameter_table

    print("usage: policy_node [--help] [--ros-args -p NAME:=VALUE ...]\n\n"
          "The bac_ros policy node (a lifecycle node): camera images + joint states in, action "
          "chunks,\na control-rate command stream and latency reports out. Parameters (ro = "
          "set at start):")
    for name, _, default, read_only, desc in parameter_table():
        print(f"  {name} ({default!r}{', ro' if read_only else ''}): {desc}")


def spin_node(executor, node: PolicyNode, keep_going) -> None:
    """Serve ``node``'s callbacks while ``keep_going()``, at most ``max_callback_rate_hz``
    of them per second. The pause between callbacks releases the GIL to the inference
    worker; what arrives faster is dropped by DDS (sensor QoS keeps the newest), which the
    observation history does not miss (it keeps one sample per 2 ms anyway). Measured in
    docs/reliability.md ("input floods"); rclpy's C++ EventsExecutor was faster under a
    flood but deadlocked when a publisher in the same process delivered to it."""
    min_cycle_s = 1.0 / node.cfg.max_callback_rate_hz
    while keep_going():
        start = time.monotonic()
        executor.spin_once(timeout_sec=0.5)
        rest = min_cycle_s - (time.monotonic() - start)
        if rest > 0:
            time.sleep(rest)


def main(args=None) -> int:
    import sys

    from rclpy.utilities import remove_ros_args

    if {"-h", "--help"} & set(remove_ros_args(args if args is not None else sys.argv)[1:]):
        print_help()
        return 0
    rclpy.init(args=args)
    try:
        node = PolicyNode()
    except (ConfigureError, ValueError) as exc:
        rclpy.logging.get_logger("bac_policy").fatal(f"cannot start: {exc}")
        rclpy.try_shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        # The lifecycle 'shutdown' transition (finalized) ends the process, as in rclcpp.
        spin_node(executor, node, lambda: rclpy.ok() and node.lifecycle_state != "finalized")
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.shutdown()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
