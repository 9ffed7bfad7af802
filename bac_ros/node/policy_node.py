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
from bac_ros.node.robot import RobotChannel, input_topic, output_topic
from bac_ros.node.runtime import ChunkRejected, ConfigureError, InferRequest, PolicyRuntime

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
        self.diag_prev = collections.Counter()  # problem counters at the last status
        self.warning = ""
        self._recent_errors = 0
        self._warmup_ms: list[float] = []
        self.robots: list[RobotChannel] = []  # made by configure, one per robot served
        self._last_reject_log_s: dict[str, float] = {}
        self._timeline = 0  # bumped by ROS clock jumps
        self.runtime: PolicyRuntime | None = None
        self._active = False
        self._entities: list = []  # subscriptions, publishers, timers made by configure
        self._transition_error = ""
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pending_lock = threading.Lock()  # RobotChannel.pending / in_flight
        if self.cfg.autostart:
            self.trigger_configure()
            if self.runtime is None:  # main() reports "cannot start: <reason>", exit 2
                raise ConfigureError(self._transition_error or "configure failed")
            self.trigger_activate()

    @property
    def lifecycle_state(self) -> str:
        return self._state_machine.current_state[1]

    # The first robot's state (a one-robot node's only one), for tools and tests.
    @property
    def buffer(self) -> ObservationBuffer:
        return self.robots[0].buffer

    @property
    def actions(self) -> ActionScheduler:
        return self.robots[0].actions

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
            if staged[0] is not None:  # compiled meanwhile, off the control path
                self.runtime.compile_later(staged[0])
        return SetParametersResult(successful=True)

    def _stage_schedule(self, cand: NodeConfig):
        """Validate a new schedule against the running policy; the old one keeps serving if
        this raises. Its K and sampler must be the running ones (no re-warm-up mid-run)."""
        from bac_ros.bac.schedule import ScheduleError

        try:
            # Eager at first: compiling here would stall the executor (the command stream)
            # for seconds; compile_later does it in the background after the swap.
            return self.runtime.load_candidate(cand.schedule, compiled=False)
        except ScheduleError as exc:
            raise ValueError(f"schedule not swapped, the active one keeps serving: "
                             f"{str(exc)[:500]}") from exc

    def _apply_live(self, cand: NodeConfig, changes: dict) -> None:
        """Push accepted runtime changes into the helpers that cached the old values."""
        for robot in self.robots:
            robot.actions.configure(cand.handover, cand.ensemble_decay, cand.blend_steps)
            robot.buffer.tolerance_s = cand.sync_tolerance_s
            robot.buffer.max_future_s = cand.max_future_stamp_s
            if "latency_window" in changes:
                robot.set_latency_window(cand.latency_window)
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
        self.runtime = PolicyRuntime(cfg, log=log.warning, info=log.info)
        pc = self.runtime.config
        self._check_runtime_constraints(cfg)
        if cfg.warmup_iterations or cfg.compile:
            t = time.perf_counter()
            self._warmup_ms = self.runtime.warmup(cfg.warmup_iterations)
            last = f"{self._warmup_ms[-1]:.0f} ms" if self._warmup_ms else "-"
            log.info(f"warm-up: {cfg.warmup_iterations} inferences in "
                     f"{1000 * (time.perf_counter() - t):.0f} ms (last {last}); torch "
                     f"threads {torch.get_num_threads()} intra-op; denoiser "
                     f"{self.runtime.compile_choice}")
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
        self.action_names = pc.action_names or [f"a{i}" for i in range(pc.shape_meta.action_dim)]
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE) if cfg.qos_reliable \
            else qos_profile_sensor_data
        self._inputs = MutuallyExclusiveCallbackGroup()
        # Last arrival (monotonic) per subscribed topic: /diagnostics names silent ones.
        self._last_input: dict[str, float] = {}
        self._ever_received: set[str] = set()
        self.robots = [self._make_robot(name, i, qos, max_bytes)
                       for i, name in enumerate(cfg.robots or [""])]
        self.pub_diag = self._keep(self.create_publisher(DiagnosticArray, "/diagnostics", 10))
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
                 f"{cfg.joint_state_topic if low_keys else '-'}" +
                 (f" for robots {cfg.robots} (under /<robot>; outputs ~/<robot>/...)"
                  if cfg.robots else ""))

    def _keep(self, entity):
        self._entities.append(entity)
        return entity

    def _make_robot(self, name: str, index: int, qos, max_bytes: int) -> RobotChannel:
        """One robot's history, queue, subscriptions and publishers (see bac_ros.node.robot)."""
        cfg, pc = self.cfg, self.runtime.config
        rgb_keys, low_keys = pc.shape_meta.rgb_keys, pc.shape_meta.low_dim_keys
        period = cfg.obs_period_s or pc.control_period_s
        sources = [f"camera:{k}" for k in rgb_keys] + (["joints"] if low_keys else [])
        robot = RobotChannel(
            name, index,
            ObservationBuffer(sources, pc.n_obs_steps, period, cfg.sync_tolerance_s,
                              max_future_s=cfg.max_future_stamp_s),
            ActionScheduler(cfg.handover, cfg.ensemble_decay, cfg.blend_steps),
            cfg.latency_window)
        start = time.monotonic()
        for key, topic in zip(rgb_keys, cfg.image_topics):
            topic = input_topic(name, topic)
            robot.image_topics[key] = self.resolve_topic_name(topic)
            self._last_input[robot.image_topics[key]] = start
            conv = ImageConverter(pc.shape_meta.obs[key].shape[1:], max_bytes=max_bytes)
            msg_type = CompressedImage if cfg.compressed_images else Image
            self._entities.append(self.create_subscription(
                msg_type, topic, lambda m, k=key, c=conv, r=robot: self._on_image(r, m, k, c),
                qos, callback_group=self._inputs))
        if low_keys:
            topic = input_topic(name, cfg.joint_state_topic)
            robot.joint_topic = self.resolve_topic_name(topic)
            self._last_input[robot.joint_topic] = start
            self._entities.append(self.create_subscription(
                JointState, topic, lambda m, r=robot: self._on_joints(r, m), qos,
                callback_group=self._inputs))
        robot.pub_chunk = self._keep(self.create_publisher(
            ActionChunk, output_topic(name, "action_chunk"), 10))
        robot.pub_latency = self._keep(self.create_publisher(
            InferenceLatency, output_topic(name, "inference_latency"), 10))
        if cfg.publish_trajectory:
            robot.pub_traj = self._keep(self.create_publisher(
                JointTrajectory, output_topic(name, "joint_trajectory"), 10))
        cmd_type = {"joint_state": JointState, "float64_multi_array": Float64MultiArray}.get(
            cfg.command_type)
        if cmd_type is not None:
            robot.pub_cmd = self._keep(self.create_publisher(
                cmd_type, output_topic(name, "command"), 10))
        return robot

    def _activate(self) -> None:
        if self.runtime is None:
            raise ConfigureError("activate before configure")
        self._control_timer = self.create_timer(
            1.0 / self.cfg.control_rate_hz, self._on_control_tick,
            callback_group=MutuallyExclusiveCallbackGroup())
        self._wake.clear()
        self._stop.clear()
        for robot in self.robots:
            robot.pending = robot.in_flight = False
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
        for robot in self.robots:
            robot.drop_plan()

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
        self.robots = []
        self.runtime = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _on_clock_jump(self, jump) -> None:
        self._timeline += 1  # an inference in flight now belongs to the old time line
        for robot in self.robots:
            robot.reset()
        self.counters["clock_jumps"] += 1
        self.warning = (f"ROS clock jumped by {jump.delta.nanoseconds * 1e-9:+.3f} s "
                        f"({jump.clock_change.name}): observation history and queued actions "
                        "cleared")
        for robot in self.robots:
            robot.warning = self.warning
        self.get_logger().warning(self.warning)

    def shutdown(self) -> None:
        self._active = False
        self._stop_worker()

    # -- inputs -------------------------------------------------------------------------------
    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _count(self, robot: RobotChannel, key: str, n: int = 1) -> None:
        """Count an event of ``robot``: in its own counters and in the node's totals."""
        robot.counters[key] += n
        self.counters[key] += n

    def _warn(self, robot: RobotChannel, warning: str) -> None:
        robot.warning = warning
        self.warning = robot.label + warning

    def _reject(self, robot: RobotChannel, err: InputError) -> None:
        self._count(robot, "rejected_inputs")
        self._count(robot, f"rejected.{err.kind}")
        self._warn(robot, str(err))
        # Throttled per kind (rclpy throttles per call site): a flood of one problem must not
        # hide the first report of another.
        now = time.monotonic()
        if now - self._last_reject_log_s.get(err.kind, -1e9) >= 1.0:
            self._last_reject_log_s[err.kind] = now
            self.get_logger().warning(f"{robot.label}input rejected ({err.kind}): {err}")

    def _mark_input(self, topic: str) -> None:
        self._last_input[topic] = time.monotonic()
        self._ever_received.add(topic)

    def silent_topics(self, now_mono: float | None = None) -> list[str]:
        """Subscribed topics with no message for input_timeout_s (any message counts, even a
        rejected one: this is about wiring, not content)."""
        now_mono = time.monotonic() if now_mono is None else now_mono
        return sorted(t for t, last in self._last_input.items()
                      if now_mono - last > self.cfg.input_timeout_s)

    def _on_image(self, robot: RobotChannel, msg, key: str, conv: ImageConverter) -> None:
        self._mark_input(robot.image_topics[key])
        try:
            stamp = stamp_s(msg.header.stamp)
            if self._decimated(robot, f"camera:{key}", stamp):
                return
            arr = conv.from_compressed(msg) if isinstance(msg, CompressedImage) else \
                conv.from_image(msg)
            if robot.buffer.add(f"camera:{key}", stamp, {key: arr}, self._now_s(),
                                time.monotonic()):
                self._fresh_sample(robot, f"camera:{key}")
        except InputError as err:
            self._reject(robot, err)
        except Exception as exc:  # noqa: BLE001 - never let a callback kill the executor
            self._reject(robot, InputError("internal", f"image callback failed: {exc!r}"))

    def _on_joints(self, robot: RobotChannel, msg: JointState) -> None:
        self._mark_input(robot.joint_topic)
        try:
            stamp = stamp_s(msg.header.stamp)
            if self._decimated(robot, "joints", stamp):
                return
            if robot.buffer.add("joints", stamp, self.joint_mapper(msg), self._now_s(),
                                time.monotonic()):
                self._fresh_sample(robot, "joints")
        except InputError as err:
            self._reject(robot, err)
        except Exception as exc:  # noqa: BLE001
            self._reject(robot, InputError("internal", f"joint callback failed: {exc!r}"))

    def _fresh_sample(self, robot: RobotChannel, source: str) -> None:
        """A new sample of the anchor source while ``robot`` is armed: start its chunk now,
        from this observation (see ``replan_on_fresh_observation``)."""
        if not robot.armed or source != robot.buffer.sources[0]:
            return
        robot.armed = False
        with self._pending_lock:
            if robot.in_flight or robot.pending:
                return
            robot.pending = True
        robot.last_trigger_s = self._now_s()
        self._count(robot, "fresh_observation_triggers")
        self._wake.set()

    def _decimated(self, robot: RobotChannel, source: str, stamp: float) -> bool:
        """A sample within the buffer's min spacing of the newest kept one is dropped before
        any conversion: the history needs no more, and a kHz driver must not eat the
        executor (counted on /diagnostics as ``decimated_inputs``)."""
        if robot.buffer.decimated(source, stamp):
            self._count(robot, "decimated_inputs")
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
        now = self._now_s()
        triggered = [self._robot_tick(robot, now) for robot in self.robots]
        if any(triggered):
            self._wake.set()

    def _robot_tick(self, robot: RobotChannel, now: float) -> bool:
        """Publish ``robot``'s due command; True when its next chunk must be started."""
        self._count(robot, "control_ticks")
        due = robot.actions.action_at(now)
        if due is None:
            self._count(robot, "hold_ticks")
            if robot.serving:  # say so once per transition, not once per tick
                robot.serving = False
                self.get_logger().warning(f"{robot.label}command stream holding: no valid "
                                          "action is due (no fresh chunk; see "
                                          "~/inference_latency)", throttle_duration_sec=1.0)
        elif robot.pub_cmd is not None:
            action = [float(v) for v in due[0]]
            if isinstance(robot.pub_cmd.msg_type(), JointState):
                m = JointState(name=self.action_names, position=action)
                m.header.stamp = self.get_clock().now().to_msg()
            else:
                m = Float64MultiArray(data=action)
            robot.pub_cmd.publish(m)
            self._count(robot, "commands")
        if due is not None and not robot.serving:
            robot.serving = True
            self.get_logger().info(f"{robot.label}command stream serving chunk {due[1]}",
                                   throttle_duration_sec=1.0)
        armed = False  # only while waiting for a frame that starts a due chunk
        if self.cfg.replan_rate_hz > 0:
            trigger = now - robot.last_trigger_s >= 1.0 / self.cfg.replan_rate_hz
        elif robot.in_flight or robot.pending:  # answered by the chunk in flight / about to run
            trigger = False
        elif self.cfg.replan_mode == "latency":
            left, lead = robot.actions.time_left_s(now), self.replan_lead_s(robot)
            trigger = left <= lead
            if not trigger and self.cfg.replan_on_fresh_observation:
                # Due within one frame: the next frame's arrival starts it (_fresh_sample).
                period = robot.buffer.sample_period_s(robot.buffer.sources[0])
                armed = period is not None and left <= lead + period
        else:
            trigger = robot.actions.remaining(now) <= self.cfg.replan_remaining
        robot.armed = armed
        if trigger:
            robot.last_trigger_s = now
            with self._pending_lock:
                robot.pending = True
        return trigger

    # -- inference worker ---------------------------------------------------------------------
    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            if not self._wake.wait(timeout=0.5):
                continue
            self._wake.clear()
            if self._stop.is_set():
                break
            # Every robot triggered by now shares this forward; one triggered during it waits
            # for the next (its wake is set again).
            self._batch_window()
            with self._pending_lock:
                batch = [r for r in self.robots if r.pending]
                if batch:
                    batch += self._due_during_forward([r for r in self.robots if r not in batch])
                for robot in batch:
                    robot.pending, robot.in_flight, robot.armed = False, True, False
            if not batch:
                continue
            try:
                self._infer_once(batch)
            except Exception as exc:  # noqa: BLE001 - report, count, keep serving
                self._recent_errors += 1
                for robot in batch:
                    self._count(robot, "inference_errors")
                    self._warn(robot, f"inference failed: {exc!r}")
                    self._publish_latency_warning(robot)
                self.get_logger().error(f"inference failed: {exc!r}\n{traceback.format_exc()}")
            finally:
                with self._pending_lock:
                    for robot in batch:
                        robot.in_flight = False

    def _batch_window(self) -> None:
        """Several robots: give the ones armed for their next frame (due within a frame) up
        to batch_window_ms to receive it and join this forward (one batched forward costs far
        less than one per robot; docs/benchmarks.md)."""
        if len(self.robots) < 2 or self.cfg.batch_window_ms <= 0:
            return
        end = time.monotonic() + self.cfg.batch_window_ms / 1000
        while time.monotonic() < end and any(
                r.armed and not r.pending and not r.in_flight for r in self.robots):
            time.sleep(0.0005)

    def _due_during_forward(self, others: list[RobotChannel]) -> list[RobotChannel]:
        """Robots (not triggered, not in flight) whose next chunk would fall due before the
        forward about to start ends: they join it now rather than wait for it and run alone
        after it (late by a whole forward). This also pulls robots whose cameras drifted
        apart back into step. Latency mode only (the other modes fix when chunks start)."""
        if self.cfg.replan_mode != "latency" or self.cfg.replan_rate_hz > 0:
            return []
        now = self._now_s()
        out = []
        for r in others:
            left = r.actions.time_left_s(now)
            if not r.in_flight and 0 < left <= self.replan_lead_s(r) + self.latency_p95_s(r):
                self._count(r, "joined_early")
                out.append(r)
        return out

    def replan_lead_s(self, robot: RobotChannel) -> float:
        """Latency mode: how long before ``robot``'s current chunk runs out its next inference
        must start so that, with latency below about half the chunk, the stream never holds:
        the p95 of its recent observation-to-chunk latencies (warm-up timings before the first
        chunk), plus one control period (the trigger is checked once per tick), plus the
        margin."""
        return self.latency_p95_s(robot) + self.cfg.replan_margin_ms / 1000 + \
            1.0 / self.cfg.control_rate_hz

    def latency_p95_s(self, robot: RobotChannel) -> float:
        """p95 of ``robot``'s recent observation-to-chunk latencies (warm-up timings before
        its first chunk; 0 without either)."""
        lat = robot.latencies or self._warmup_ms
        return float(np.percentile(np.asarray(lat), 95)) / 1000 if lat else 0.0

    def _infer_once(self, batch: list[RobotChannel]) -> None:
        """One batched forward for the robots in ``batch`` that have a fresh, complete
        observation; each gets its chunk (or its own rejection)."""
        cfg = self.cfg  # one consistent snapshot per inference
        rt = self.runtime
        if cfg.bac_enabled and rt.schedule is not None:
            rt.set_steps(rt.schedule.num_steps if not cfg.num_inference_steps
                         else cfg.num_inference_steps)
        else:
            rt.set_steps(cfg.num_inference_steps)
        timeline = self._timeline
        ready = [r for r in (self._request(robot, cfg) for robot in batch) if r is not None]
        if not ready:
            return
        results = rt.infer_batch([req for *_, req in ready], use_bac=cfg.bac_enabled,
                                 limits=(cfg.action_min, cfg.action_max),
                                 limit_mode=cfg.limit_mode)
        if timeline != self._timeline:
            for robot, *_ in ready:
                self._count(robot, "dropped_after_clock_jump")
            self.get_logger().warning("chunk dropped: the ROS clock jumped during inference")
            return
        for (robot, hist, chunk_id, age_s, _), res in zip(ready, results):
            if isinstance(res, ChunkRejected):
                self._count(robot, "rejected_chunks")
                self._warn(robot, str(res))
                self.get_logger().error(f"{robot.label}chunk rejected: {res}")
                self._publish_latency_warning(robot, age_s)
                continue
            robot.chunk_id = chunk_id
            self._publish_chunk(robot, res, hist, chunk_id, cfg)
        self._recent_errors = 0

    def _request(self, robot: RobotChannel, cfg: NodeConfig):
        """(robot, history, chunk id, observation age, InferRequest) for ``robot``'s next
        chunk, or None when it has no complete observation or only a stale one."""
        hist = robot.buffer.latest()
        if hist is None:
            self._report_incomplete(robot)
            return None
        now = self._now_s()
        age_s = now - hist.stamp_s
        if age_s > cfg.max_obs_age_s:
            self._count(robot, "stale_skips")
            self._warn(robot, f"stale observation: newest complete observation is {age_s:.3f} "
                       f"s old (max_obs_age_s={cfg.max_obs_age_s}); not acting")
            self.get_logger().warning(robot.label + robot.warning, throttle_duration_sec=1.0)
            self._publish_latency_warning(robot, age_s)
            return None
        chunk_id = robot.chunk_id + 1
        if getattr(self, "fault_injector", None) is not None:
            self.fault_injector(chunk_id)
        fixed = None
        if cfg.handover == "rtc":  # freeze what will run while this chunk is computed
            pc = self.runtime.config
            fixed = robot.actions.planned(hist.stamp_s, pc.control_period_s,
                                          pc.horizon - pc.n_obs_steps + 1,
                                          now + self.latency_p95_s(robot) +
                                          cfg.replan_margin_ms / 1000)
            if fixed is not None:
                self._count(robot, "rtc_fixed_actions", int(fixed[1].sum()))
        return robot, hist, chunk_id, age_s, InferRequest(
            hist.obs, robot.seed(cfg.seed, chunk_id), fixed)

    def _report_incomplete(self, robot: RobotChannel) -> None:
        """No synced history. Before any input that is just waiting; once some sources
        publish, name the ones that are silent (a dead camera, joints far below rate)."""
        buf = robot.buffer
        newest = {s: buf.newest_stamp(s) for s in buf.sources}
        if all(t is None for t in newest.values()):
            self._count(robot, "waiting_for_inputs")
            return
        self._count(robot, "unsynced_observation")
        silent = [s for s, t in newest.items() if t is None]
        self._warn(robot, f"no complete observation: no samples from {silent}" if silent else
                   "no complete observation: sources not within sync_tolerance_s="
                   f"{self.cfg.sync_tolerance_s} at the observation period (newest stamps "
                   f"{ {s: round(t, 3) for s, t in newest.items()} })")
        self.get_logger().warning(robot.label + robot.warning, throttle_duration_sec=1.0)
        self._publish_latency_warning(robot)

    def _publish_chunk(self, robot: RobotChannel, res, hist, chunk_id: int,
                       cfg: NodeConfig) -> None:
        if not self._active:  # deactivated during this inference: nothing planned then runs
            self._count(robot, "dropped_inactive")
            return
        pc = self.runtime.config
        dt = pc.control_period_s
        publish_s = self._now_s()
        # n_execute counts from the chunk's arrival: the slots already due when it lands are
        # never played, so without this a 4-action chunk that took 0.22 s would serve 1-2
        # actions and the stream would hold (what the delay study in docs/results.md does too).
        late = max(0, math.ceil((publish_s - hist.stamp_s) / dt - 1e-6))
        n_exec = min((cfg.n_execute or pc.n_action_steps) + late, len(res.actions))
        prev_end = robot.actions.exhausted_at()
        deadline_missed = prev_end is not None and publish_s > prev_end
        robot.actions.add(Chunk(res.actions[:n_exec], hist.stamp_s, dt, chunk_id, publish_s))

        msg = ActionChunk(action_names=self.action_names, action_period_s=dt,
                          horizon=len(res.actions), action_dim=res.actions.shape[1],
                          n_execute=n_exec, chunk_id=chunk_id,
                          schedule_id=res.schedule_id)
        msg.header.stamp = to_stamp(hist.stamp_s)
        msg.header.frame_id = pc.name
        msg.first_action_time = to_stamp(hist.stamp_s)
        msg.actions = res.actions.reshape(-1).astype(np.float32)
        robot.pub_chunk.publish(msg)
        if robot.pub_traj is not None:
            traj = JointTrajectory(joint_names=self.action_names)
            traj.header.stamp = to_stamp(hist.stamp_s)
            for j in range(n_exec):
                pt = JointTrajectoryPoint(positions=[float(v) for v in res.actions[j]])
                pt.time_from_start.sec, frac = int(j * dt), j * dt - int(j * dt)
                pt.time_from_start.nanosec = int(frac * 1e9)
                traj.points.append(pt)
            robot.pub_traj.publish(traj)

        total_ms = 1000 * (time.monotonic() - hist.received_s)
        total_ms = max(total_ms, res.preprocess_ms + res.denoise_ms + res.postprocess_ms)
        robot.latencies.append(total_ms)
        robot.chunk_times.append(time.monotonic())
        self._count(robot, "chunks")
        if res.batch_size > 1:
            self._count(robot, "batched_chunks")
        if deadline_missed:
            self._count(robot, "deadline_misses")
        robot.warning = ""
        lat = self._latency_msg(robot, 1000 * (publish_s - hist.stamp_s))
        lat.preprocess_ms, lat.denoise_ms = res.preprocess_ms, res.denoise_ms
        lat.postprocess_ms, lat.total_ms = res.postprocess_ms, total_ms
        lat.denoising_steps, lat.bac_enabled = res.steps, res.bac_used
        lat.blocks_computed, lat.blocks_reused = res.blocks_computed, res.blocks_reused
        lat.batch_size = res.batch_size
        lat.deadline_missed = deadline_missed
        robot.pub_latency.publish(lat)

    def _latency_msg(self, robot: RobotChannel, age_ms: float = 0.0) -> InferenceLatency:
        c = robot.counters
        lat = InferenceLatency(device=self.cfg.device, observation_age_ms=age_ms,
                               rejected_inputs=c["rejected_inputs"],
                               stale_skips=c["stale_skips"],
                               inference_errors=c["inference_errors"],
                               rejected_chunks=c["rejected_chunks"],
                               chunk_id=robot.chunk_id, warning=robot.warning)
        lat.header.stamp = self.get_clock().now().to_msg()
        if robot.latencies:
            p50, p95, p99 = np.percentile(np.array(robot.latencies), [50, 95, 99])
            lat.total_p50_ms, lat.total_p95_ms, lat.total_p99_ms = p50, p95, p99
        if len(robot.chunk_times) >= 2:
            span = robot.chunk_times[-1] - robot.chunk_times[0]
            lat.achieved_rate_hz = (len(robot.chunk_times) - 1) / span if span > 0 else 0.0
        return lat

    def _publish_latency_warning(self, robot: RobotChannel, age_s: float = 0.0) -> None:
        robot.pub_latency.publish(self._latency_msg(robot, 1000 * age_s))

    # -- diagnostics --------------------------------------------------------------------------
    _PROBLEMS = ("stale_skips", "rejected_inputs", "deadline_misses", "rejected_chunks",
                 "inference_errors", "rejected_parameters", "control_tick_errors",
                 "unsynced_observation", "clock_jumps", "diagnostics_errors")

    def _publish_diagnostics(self) -> None:
        """One status for the node (totals over its robots), plus one per robot when it
        serves several (named ``bac_ros: policy <robot>``)."""
        silent = self.silent_topics()
        statuses = [self._status("bac_ros: policy", self, silent, self._node_values())]
        if len(self.robots) > 1:
            for robot in self.robots:
                topics = set(robot.image_topics.values()) | ({robot.joint_topic} - {""})
                statuses.append(self._status(f"bac_ros: policy {robot.name}", robot,
                                             [t for t in silent if t in topics],
                                             self._robot_values(robot)))
        arr = DiagnosticArray(status=statuses)
        arr.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(arr)

    def _robot_values(self, robot: RobotChannel) -> dict:
        lat = self._latency_msg(robot)
        return dict(total_p50_ms=round(lat.total_p50_ms, 3),
                    total_p99_ms=round(lat.total_p99_ms, 3),
                    achieved_rate_hz=round(lat.achieved_rate_hz, 3))

    def _node_values(self) -> dict:
        values = self._robot_values(self.robots[0]) if self.robots else {}
        values.update(
            lifecycle_state=self.lifecycle_state, robots=len(self.robots),
            compiled=bool(self.runtime is not None and self.runtime.compiled),
            compile_choice=self.runtime.compile_choice if self.runtime is not None else "",
            bac_enabled=self.cfg.bac_enabled and self.runtime.schedule is not None,
            schedule_id=self.runtime.schedule.schedule_id if self.runtime.schedule else "")
        return values

    def _status(self, name: str, owner, silent: list[str], extra: dict) -> DiagnosticStatus:
        """The status of ``owner`` (the node, or one of its robots: each has ``counters``,
        ``warning`` and ``diag_prev``) for the last second."""
        c, prev, warning = owner.counters, owner.diag_prev, owner.warning
        recent = {k: c[k] - prev[k] for k in self._PROBLEMS if c[k] > prev[k]}
        owner.diag_prev = collections.Counter({k: c[k] for k in self._PROBLEMS})
        status = DiagnosticStatus(name=name, hardware_id=self.cfg.device)
        if self._recent_errors >= 3:
            status.level = DiagnosticStatus.ERROR
            status.message = f"repeated inference failures: {warning}"
        elif silent:
            never = [t for t in silent if t not in self._ever_received]
            status.level = DiagnosticStatus.WARN
            status.message = (
                f"no input for more than input_timeout_s={self.cfg.input_timeout_s} s on "
                f"{silent}" + (f" (never received: {never}; check the topic names / remaps "
                               "and that the drivers publish)" if never else "") +
                (f"; {warning} (last second: {recent})" if recent else ""))
        elif recent:
            status.level = DiagnosticStatus.WARN
            status.message = f"{warning} (last second: {recent})"
        elif not self._active:
            status.level = DiagnosticStatus.OK
            status.message = (f"{self.lifecycle_state} (lifecycle): configured, not publishing "
                              "commands; `ros2 lifecycle set <node> activate` to serve")
        else:
            status.level, status.message = DiagnosticStatus.OK, "serving"
            owner.warning = ""
        values = dict(c)
        values.update(extra)
        status.values = [KeyValue(key=k, value=str(v)) for k, v in sorted(values.items())]
        return status


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
