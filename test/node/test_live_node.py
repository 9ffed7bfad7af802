"""The real node over real DDS topics: bag replay, offline agreement, live parameters,
bad input, fault handling."""

import array
import time

import numpy as np
import pytest
import rclpy
import torch
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, JointState

from bac_ros.engine.checkpoint import load_policy
from bac_ros.node.replay import LiveNode, read_bag, wait_until


def _wait(pred, timeout=10.0):
    return wait_until(pred, timeout)


@pytest.fixture(scope="module")
def messages(bag):
    return read_bag(bag)


def test_replay_bag_through_node(tiny_files, messages):
    """Chunks at the expected rate, offline-identical actions, consistent latency, 10 Hz
    command stream, and a mid-replay parameter change that takes effect."""
    used = []
    with LiveNode({"checkpoint": tiny_files["checkpoint"],
                   "schedule": tiny_files["schedule"]}) as live:
        infer = live.node.runtime.infer_batch

        def spy(requests, use_bac, **kw):  # records what the real runtime was given
            res = infer(requests, use_bac, **kw)
            used.extend((r.seed, use_bac, {k: v.copy() for k, v in r.obs.items()}, x)
                        for r, x in zip(requests, res))
            return res

        live.node.runtime.infer_batch = spy
        half = len(messages) // 2
        live.probe.replay(messages[:half])
        r = live.node.set_parameters([Parameter("bac.enabled", value=False)])
        assert r[0].successful
        n_bac = len(live.probe.result.chunks)
        live.probe.replay(messages[half:])
        time.sleep(0.5)
        res = live.probe.result

    chunks = [m for _, m in res.chunks]
    duration_s = (messages[-1][0] - messages[0][0]) * 1e-9
    # 8 actions per chunk, replan at 2 remaining -> one chunk per ~0.6-0.8 s
    assert 0.6 * duration_s / 0.8 <= len(chunks) <= 2.0 * duration_s / 0.6, len(chunks)
    # offline agreement: same checkpoint, same observations, same noise seed
    policy = load_policy(tiny_files["checkpoint"])
    by_id = {m.chunk_id: m for m in chunks}
    checked = 0
    for seed, use_bac, obs, _ in used[-6:]:
        chunk_id = seed  # node seed parameter is 0: seed == chunk_id
        if chunk_id not in by_id or use_bac:
            continue
        pred = policy.predict(obs, generator=torch.Generator().manual_seed(seed))
        got = np.asarray(by_id[chunk_id].actions).reshape(-1, 2)
        np.testing.assert_allclose(got, pred.action_pred[0, 1:], rtol=1e-5, atol=1e-4)
        checked += 1
    assert checked >= 1
    # latency messages: parts <= total, block counts follow the schedule, BAC then full
    lats = [m for m in res.latencies if not m.warning]
    assert lats and all(m.total_ms + 1e-6 >= m.preprocess_ms + m.denoise_ms + m.postprocess_ms
                        for m in lats)
    sched = tiny_files["sched"]
    bac = [m for m in lats if m.bac_enabled]
    full = [m for m in lats if not m.bac_enabled]
    assert bac and full and n_bac >= 1
    assert all(m.blocks_computed == sum(len(s) for s in sched.update_steps) for m in bac)
    assert all(m.blocks_reused == 0 and m.blocks_computed == 10 * sched.n_blocks for m in full)
    assert all(c.schedule_id == sched.schedule_id for c in chunks[:n_bac])
    assert chunks[-1].schedule_id == ""
    # control stream at control_rate_hz (10 Hz) within tolerance while chunks were available
    # (median interval: the stream holds, by design, whenever no valid action is due)
    t = np.array([t for t, _ in res.commands])
    rate = 1.0 / np.median(np.diff(t))
    assert len(t) > 20 and 8.0 <= rate <= 12.0, rate


def _publish(live, topic, msg, n=1, period=0.0):
    pub = live.probe.publisher(topic, type(msg))
    for _ in range(n):
        pub.publish(msg)
        time.sleep(period)


def _now(live):
    return live.node.get_clock().now().to_msg()


def test_bad_inputs_are_rejected_counted_and_node_keeps_serving(tiny_files, messages):
    """Each bad message gets a counter and no chunk; valid input afterwards still works."""
    with LiveNode({"checkpoint": tiny_files["checkpoint"], "schedule": tiny_files["schedule"],
                   "max_obs_age_s": 0.3}) as live:
        time.sleep(1.0)
        good = Image(height=96, width=96, encoding="rgb8", step=288,
                     data=array.array("B", bytes(96 * 96 * 3)))
        cases = [
            ("bad_encoding", "/camera/image_raw", dict(encoding="yuv422")),
            ("bad_image", "/camera/image_raw", dict(step=100)),
            ("bad_image", "/camera/image_raw", dict(height=0, data=array.array("B"))),
            ("bad_image_size", "/camera/image_raw",
             dict(width=128, step=384, data=array.array("B", bytes(96 * 384)))),
            ("missing_joint", "/joint_states", JointState(name=["agent_x"], position=[1.0])),
            ("nonfinite_joint", "/joint_states",
             JointState(name=["agent_x", "agent_y"], position=[1.0, float("nan")])),
            ("bad_joint_state", "/joint_states",
             JointState(name=["agent_x", "agent_y"], position=[1.0])),
            ("bad_joint_state", "/joint_states",
             JointState(name=["agent_x", "agent_x"], position=[1.0, 2.0])),
            ("bad_stamp", "/joint_states", JointState(name=["agent_x", "agent_y"],
                                                      position=[1.0, 2.0])),
            ("future_stamp", "/joint_states", JointState(name=["agent_x", "agent_y"],
                                                         position=[1.0, 2.0])),
        ]
        for kind, topic, spec in cases:
            before = live.node.counters[f"rejected.{kind}"]
            if isinstance(spec, dict):
                msg = Image(**{**{f: getattr(good, f) for f in
                                  ("height", "width", "encoding", "step", "data")}, **spec})
            else:
                msg = spec
            if kind != "bad_stamp":
                msg.header.stamp = _now(live)
            if kind == "future_stamp":
                msg.header.stamp.sec += 30
            _publish(live, topic, msg)
            assert _wait(lambda k=kind, b=before: live.node.counters[f"rejected.{k}"] > b, 5), kind
        assert live.probe.result.chunks == []  # nothing acted on bad input
        # the latency topic carries the counters (stale warning published while idle)
        live.probe.replay(messages[:400])
        assert _wait(lambda: len(live.probe.result.chunks) > 0, 5)
        lat = live.probe.result.latencies[-1]
        assert lat.rejected_inputs >= len(cases)
        # out-of-order and duplicate stamps on the live stream are dropped, not used
        js = JointState(name=["agent_x", "agent_y"], position=[1.0, 2.0])
        js.header.stamp = _now(live)
        dup_before = live.node.counters["rejected.duplicate"]
        _publish(live, "/joint_states", js, n=2, period=0.1)
        assert _wait(lambda: live.node.counters["rejected.duplicate"] > dup_before, 5)
        old = JointState(name=["agent_x", "agent_y"], position=[1.0, 2.0])
        old.header.stamp.sec = js.header.stamp.sec - 1
        old.header.stamp.nanosec = js.header.stamp.nanosec
        _publish(live, "/joint_states", old)
        assert _wait(lambda: live.node.counters["rejected.out_of_order"] > 0, 5)
        # camera stops: observations go stale, the node refuses to act and says so
        assert _wait(lambda: live.node.counters["stale_skips"] > 0, 5)
        time.sleep(0.5)  # a chunk already in flight over DDS may still land
        n, skips = len(live.probe.result.chunks), live.node.counters["stale_skips"]
        time.sleep(1.0)
        assert len(live.probe.result.chunks) == n
        assert live.node.counters["stale_skips"] > skips  # it keeps trying, and keeps refusing
        assert any("stale" in m.warning for m in live.probe.result.latencies)
        # ...and resumes when the camera does
        live.probe.replay(messages[400:700])
        assert len(live.probe.result.chunks) > n


def test_parameters_validated_live(tiny_files):
    """Out-of-range, wrong-type and read-only parameter sets are rejected; valid ones apply."""
    with LiveNode({"checkpoint": tiny_files["checkpoint"],
                   "schedule": tiny_files["schedule"]}) as live:
        node = live.node
        for p in [Parameter("control_rate_hz", value=5000.0),
                  Parameter("handover", value="teleport"),
                  Parameter("control_rate_hz", value="fast"),
                  Parameter("num_inference_steps", value=7),  # BAC on, schedule K=10
                  Parameter("action_min", value=[0.0]),
                  Parameter("device", value="cuda")]:  # read-only
            r = node.set_parameters([p])[0]
            assert not r.successful and r.reason, p.name
        assert node.cfg.control_rate_hz == 10.0 and node.cfg.handover == "replace"
        ok = node.set_parameters([Parameter("handover", value="temporal_ensemble"),
                                  Parameter("control_rate_hz", value=20.0),
                                  Parameter("bac.enabled", value=False)])
        assert all(r.successful for r in ok)
        # limits only make sense together: set them atomically
        assert node.set_parameters_atomically([Parameter("action_min", value=[0.0, 0.0]),
                                               Parameter("action_max", value=[512.0, 512.0])
                                               ]).successful
        assert node.actions.mode == "temporal_ensemble" and node.cfg.control_rate_hz == 20.0
        assert node.set_parameters([Parameter("num_inference_steps", value=7)])[0].successful
        # sync/stamp tolerances and the statistics window reach the helpers that use them
        ok = node.set_parameters([Parameter("sync_tolerance_s", value=0.05),
                                  Parameter("max_future_stamp_s", value=0.2),
                                  Parameter("latency_window", value=5)])
        assert all(r.successful for r in ok)
        assert node.buffer.tolerance_s == 0.05 and node.buffer.max_future_s == 0.2
        assert node.robots[0].latencies.maxlen == 5 and node.robots[0].chunk_times.maxlen == 5


def test_inference_exception_and_nan_actions_are_contained(tiny_files, messages):
    """An exception inside inference and a NaN chunk are reported; the next inference works."""
    with LiveNode({"checkpoint": tiny_files["checkpoint"],
                   "schedule": tiny_files["schedule"]}) as live:
        faults = {"n": 0}

        def inject(chunk_id):
            faults["n"] += 1
            if faults["n"] == 1:
                raise RuntimeError("injected CUDA error")

        live.node.fault_injector = inject
        infer = live.node.runtime.infer_batch
        calls = {"n": 0}

        def nan_once(requests, use_bac, **kw):
            calls["n"] += 1
            res = infer(requests, use_bac, **kw)
            if calls["n"] == 1:
                from bac_ros.node.runtime import ChunkRejected
                res[0] = ChunkRejected("predicted actions contain NaN/inf; chunk dropped")
            return res

        live.node.runtime.infer_batch = nan_once
        action_at = live.node.actions.action_at
        ticks = {"n": 0}

        def tick_fault_once(now_s):
            ticks["n"] += 1
            if ticks["n"] == 1:
                raise RuntimeError("injected control-tick fault")
            return action_at(now_s)

        live.node.actions.action_at = tick_fault_once
        live.probe.replay(messages[:600])
        c = live.node.counters
        assert c["inference_errors"] == 1 and c["rejected_chunks"] == 1
        assert c["control_tick_errors"] == 1 and c["commands"] > 0  # the timer kept running
        assert len(live.probe.result.chunks) >= 2
        assert any("injected" in m.warning for m in live.probe.result.latencies)


def test_schedule_for_other_checkpoint_refuses_to_start(tiny_files):
    """A schedule calibrated for another model stops the node with the reason, unless the
    user allows falling back to full compute."""
    from bac_ros.bac.baselines import build_schedule
    from bac_ros.bac.schedule import save_schedule
    from bac_ros.node.runtime import ConfigureError

    p = tiny_files["policy"]
    other = build_schedule("uniform", p.model.blocks(), 10, 4, "0000000000000000", "ddim")
    path = save_schedule(other, tiny_files["dir"] / "other.yaml")
    with pytest.raises(ConfigureError, match="calibrated for model"):
        LiveNode({"checkpoint": tiny_files["checkpoint"], "schedule": str(path)})
    rclpy.try_shutdown()
    with LiveNode({"checkpoint": tiny_files["checkpoint"], "schedule": str(path),
                   "bac.fallback_to_full": True}) as live:
        assert live.node.runtime.schedule is None


def test_lowdim_policy_runs_on_joint_states_alone(tiny_files, messages):
    """A low-dim policy (the bundled Push-T kind: agent + T keypoints as named joints) needs no
    camera: histories are anchored on joint states and its chunks match offline predictions."""
    from bac_ros.engine.checkpoint import save_policy
    from bac_ros.engine.testing import make_tiny_policy
    from bac_ros.pusht.env import KEYPOINT_NAMES

    p = make_tiny_policy("lowdim", num_inference_steps=5, scheduler="ddim")
    p.config.obs_low_dim_names["keypoints"] = list(KEYPOINT_NAMES)
    ckpt = save_policy(p, tiny_files["dir"] / "tiny_lowdim_named.safetensors")
    used = []
    with LiveNode({"checkpoint": str(ckpt)}) as live:
        infer = live.node.runtime.infer_batch

        def spy(requests, use_bac, **kw):
            used.extend((r.seed, {k: v.copy() for k, v in r.obs.items()}) for r in requests)
            return infer(requests, use_bac, **kw)

        live.node.runtime.infer_batch = spy
        live.probe.replay(messages[:500])
        assert _wait(lambda: len(live.probe.result.chunks) >= 2, 5)
        chunks = {m.chunk_id: m for _, m in live.probe.result.chunks}
    assert live.node.counters["rejected_inputs"] == 0
    policy = load_policy(str(ckpt))
    seed, obs = next((s, o) for s, o in used if s in chunks)
    assert obs["keypoints"].shape == (1, 2, 16) and obs["agent_pos"].shape == (1, 2, 2)
    pred = policy.predict(obs, generator=torch.Generator().manual_seed(seed))
    np.testing.assert_allclose(np.asarray(chunks[seed].actions).reshape(-1, 2),
                               pred.action_pred[0, 1:], rtol=1e-5, atol=1e-4)


def test_silent_camera_is_named_and_nothing_is_published(tiny_files):
    """Joint states without the camera: no chunk, a counter, and a warning naming the camera
    on ~/inference_latency and a WARN on /diagnostics."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    with LiveNode({"checkpoint": tiny_files["checkpoint"]}) as live:
        diags = []
        live.probe.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diags.extend(
            s for s in m.status if s.name == "bac_ros: policy"), 10)
        pub = live.probe.publisher("/joint_states", JointState)
        time.sleep(1.0)
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            js = JointState(name=["agent_x", "agent_y"], position=[1.0, 2.0])
            js.header.stamp = _now(live)
            pub.publish(js)
            time.sleep(0.01)
        assert _wait(lambda: any(d.level == DiagnosticStatus.WARN for d in diags), 3)
        assert live.node.counters["unsynced_observation"] > 0
        assert live.probe.result.chunks == []
        assert any("camera:image" in m.warning for m in live.probe.result.latencies)
        assert any("camera:image" in d.message for d in diags if d.level == DiagnosticStatus.WARN)


def test_nothing_arriving_is_named_on_diagnostics(tiny_files):
    """A node subscribed to a topic nobody publishes (a wrong name) says so on /diagnostics
    after input_timeout_s, naming the topic, instead of reporting OK forever (issue 14)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    with LiveNode({"checkpoint": tiny_files["checkpoint"], "input_timeout_s": 0.5,
                   "image_topics": ["/camera/wrong_name"]}) as live:
        diags = []
        live.probe.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diags.extend(
            s for s in m.status if s.name == "bac_ros: policy"), 10)
        assert _wait(lambda: any(d.level == DiagnosticStatus.WARN and "/camera/wrong_name" in
                                 d.message for d in diags), 6)
        msg = next(d.message for d in diags if "/camera/wrong_name" in d.message)
        assert "never received" in msg and "/joint_states" in msg
        assert live.node.silent_topics() == ["/camera/wrong_name", "/joint_states"]


def test_schedule_hot_swap(tiny_files, messages):
    """`ros2 param set /bac_policy schedule NEW.yaml`: a valid schedule swaps between chunks
    (later chunks carry its id, no inference error, the control timer keeps ticking); one made
    for another checkpoint is refused with the reason and the active one keeps serving."""
    from bac_ros.bac.baselines import build_schedule
    from bac_ros.bac.schedule import save_schedule

    p = tiny_files["policy"]
    new = build_schedule("uniform", p.model.blocks(), 10, 7, p.fingerprint, "ddim")
    new_path = save_schedule(new, tiny_files["dir"] / "swap_new.yaml")
    other = save_schedule(build_schedule("uniform", p.model.blocks(), 10, 4, "0123456789abcdef",
                                         "ddim"), tiny_files["dir"] / "swap_other.yaml")
    with LiveNode({"checkpoint": tiny_files["checkpoint"],
                   "schedule": tiny_files["schedule"]}) as live:
        node = live.node
        live.probe.replay(messages[: len(messages) // 3])
        old_id = tiny_files["sched"].schedule_id
        assert live.probe.result.chunks[-1][1].schedule_id == old_id
        r = node.set_parameters([Parameter("schedule", value=str(new_path))])[0]
        assert r.successful, r.reason
        if node.runtime.compiled:  # compiled in the background, then swapped in
            from bac_ros.bac.compiled import CompiledSchedule

            assert _wait(lambda: isinstance(node.runtime.cache, CompiledSchedule), 30)
        n_before = len(live.probe.result.chunks)
        live.probe.replay(messages[len(messages) // 3: 2 * len(messages) // 3])
        after = [m.schedule_id for _, m in live.probe.result.chunks[n_before + 1:]]
        assert after and set(after) == {new.schedule_id}
        bad = node.set_parameters([Parameter("schedule", value=str(other))])[0]
        assert not bad.successful and "keeps serving" in bad.reason and "model" in bad.reason
        missing = node.set_parameters([Parameter("schedule", value="/nonexistent.yaml")])[0]
        assert not missing.successful and "does not exist" in missing.reason
        n_mid = len(live.probe.result.chunks)
        live.probe.replay(messages[2 * len(messages) // 3:])
        later = [m.schedule_id for _, m in live.probe.result.chunks[n_mid + 1:]]
        assert later and set(later) == {new.schedule_id}
        assert node.counters["schedule_swaps"] == 1
        assert node.counters["inference_errors"] == 0 and node.counters["control_ticks"] > 0
        assert node.get_parameter("schedule").value == str(new_path)


def test_rtc_handover_continues_the_current_chunk(tiny_files, messages):
    """handover:=rtc: each new chunk is computed with the actions due while it is computed
    fixed to what the stream sends, so consecutive chunks agree on those slots (a random
    policy's free slots never would); commands keep flowing."""
    with LiveNode({"checkpoint": tiny_files["checkpoint"], "schedule": tiny_files["schedule"],
                   "handover": "rtc", "replan_margin_ms": 250.0}) as live:
        live.probe.replay(messages[: len(messages) // 2])
        time.sleep(0.5)
        res = live.probe.result
        fixed = live.node.counters["rtc_fixed_actions"]
    chunks = [m for _, m in res.chunks]
    assert len(chunks) >= 3 and fixed >= len(chunks) - 1

    def timed(m):
        t0 = m.first_action_time.sec + m.first_action_time.nanosec * 1e-9
        acts = np.asarray(m.actions).reshape(m.horizon, m.action_dim)[: m.n_execute]
        return {round(t0 + j * m.action_period_s, 3): a for j, a in enumerate(acts)}

    agreed = 0
    for a, b in zip(chunks, chunks[1:]):
        ta, tb = timed(a), timed(b)
        agreed += sum(np.allclose(ta[t], tb[t], atol=1e-2) for t in set(ta) & set(tb))
    assert agreed >= len(chunks) - 1, (agreed, fixed)
    assert len(res.commands) > 10


def test_launch_parameter_types(tiny_files):
    """`-p control_rate_hz:=20` (an integer to ROS) sets a float parameter, as a runtime
    `ros2 param set` does; a wrong type stops the real executable with one line naming the
    parameter (it used to end in an rclpy traceback)."""
    import subprocess
    import sys
    from pathlib import Path

    with LiveNode({"checkpoint": tiny_files["checkpoint"], "control_rate_hz": 20,
                   "max_callback_rate_hz": 500}) as live:
        assert live.node.cfg.control_rate_hz == 20.0
        assert live.node.cfg.max_callback_rate_hz == 500.0
    rclpy.try_shutdown()
    out = subprocess.run([str(Path(sys.executable).parent / "policy_node"), "--ros-args",
                          "-p", f"checkpoint:={tiny_files['checkpoint']}",
                          "-p", "control_rate_hz:=fast"],
                         capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    assert out.returncode == 2 and "cannot start: parameter `control_rate_hz`" in text, text
    assert "Traceback" not in text


def test_fresh_observation_starts_the_chunk(tiny_files, messages):
    """replan_on_fresh_observation (default): a chunk due within a frame starts when the next
    camera frame arrives, so it is computed from a frame milliseconds old; at the control tick
    (false) the frame waits for the tick, ~half a 10 Hz frame period on average."""
    waits = {}
    for fresh in (True, False):
        with LiveNode({"checkpoint": tiny_files["checkpoint"], "schedule": tiny_files["schedule"],
                       "replan_on_fresh_observation": fresh}) as live:
            live.probe.replay(messages[:700])
            time.sleep(0.3)
            lats = [m for m in live.probe.result.latencies if not m.warning]
            triggers = live.node.counters["fresh_observation_triggers"]
        assert len(lats) >= 5
        assert (triggers >= len(lats) // 2) if fresh else triggers == 0, (triggers, len(lats))
        # observation age at publication minus the inference itself = how long the frame
        # waited before its chunk started
        waits[fresh] = float(np.median([m.observation_age_ms - m.preprocess_ms - m.denoise_ms
                                        - m.postprocess_ms for m in lats]))
    assert waits[True] < 25.0 and waits[True] < waits[False] - 15.0, waits
