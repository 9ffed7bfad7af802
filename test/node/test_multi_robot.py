"""One node serving several robots (robots:=[...]) over real DDS topics: each robot's own
inputs, chunks and command stream, batched forwards, and one robot's silent camera touching
only its own stream."""

import time

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

from bac_ros.engine.checkpoint import load_policy
from bac_ros.node.replay import LiveNode, fan_out, read_bag, wait_until
from bac_ros.node.robot import SEED_STRIDE, input_topic, output_topic


def test_topic_names():
    assert input_topic("", "/camera/image_raw") == "/camera/image_raw"
    assert input_topic("r1", "/camera/image_raw") == "/r1/camera/image_raw"
    assert input_topic("r1", "joint_states") == "r1/joint_states"
    assert output_topic("", "command") == "~/command"
    assert output_topic("r1", "command") == "~/r1/command"


@pytest.mark.parametrize("robots, problem", [(["r1", "r1"], "duplicates"),
                                             (["1abc"], "name tokens"),
                                             (["a/b"], "name tokens")])
def test_bad_robot_names_are_refused(robots, problem):
    from bac_ros.node.params import NodeConfig

    with pytest.raises(ValueError, match=problem):
        NodeConfig(robots=robots)


def test_two_robots_one_node(tiny_files, bag):
    robots = ["r1", "r2"]
    messages = read_bag(bag)
    used = []
    with LiveNode({"checkpoint": tiny_files["checkpoint"], "schedule": tiny_files["schedule"],
                   "robots": robots, "input_timeout_s": 0.6}) as live:
        node = live.node
        assert [r.name for r in node.robots] == robots
        assert node.robots[1].image_topics == {"image": "/r2/camera/image_raw"}
        infer = node.runtime.infer_batch

        def spy(requests, use_bac, **kw):
            res = infer(requests, use_bac, **kw)
            used.extend((len(requests), r.seed, {k: v.copy() for k, v in r.obs.items()})
                        for r in requests)
            return res

        node.runtime.infer_batch = spy
        diags = []
        live.probe.create_subscription(DiagnosticArray, "/diagnostics",
                                       lambda m: diags.extend(m.status), 10)
        half = len(messages) // 2
        live.probe.replay(fan_out(messages[:half], robots))
        time.sleep(0.3)
        both = {r: len(live.probes[r].result.chunks) for r in robots}
        # Each robot: its own chunks and command stream on its own topics.
        for r in robots:
            res = live.probes[r].result
            assert len(res.chunks) >= 3, (r, both)
            assert len(res.commands) >= 20, (r, len(res.commands))
        # Their chunks fell due together: most were computed in one batched forward.
        sizes = [m.batch_size for m in live.probes["r1"].result.latencies if not m.warning]
        assert sizes.count(2) >= len(sizes) // 2 and sizes.count(2) >= 3, sizes
        assert node.counters["batched_chunks"] >= 6
        # Offline agreement for the second robot: its own observation and noise stream.
        policy = load_policy(tiny_files["checkpoint"])
        chunks2 = {m.chunk_id: m for _, m in live.probes["r2"].result.chunks}
        checked = 0
        for batch, seed, obs in used:
            chunk_id = seed - SEED_STRIDE
            if batch == 2 and chunk_id in chunks2 and checked < 2:
                from bac_ros.bac.cache import ScheduledBlockCache
                from bac_ros.bac.schedule import load_schedule

                sched = load_schedule(tiny_files["schedule"], policy=policy)
                cache = ScheduledBlockCache(sched, policy.model.blocks())
                pred = policy.predict(obs, generator=torch.Generator().manual_seed(seed),
                                      cache=cache)
                got = np.asarray(chunks2[chunk_id].actions).reshape(-1, 2)
                np.testing.assert_allclose(got, pred.action_pred[0, 1:], rtol=1e-4, atol=1e-3)
                checked += 1
        assert checked >= 1

        # Robot r2's inputs stop; r1's go on: r1 keeps serving, r2 stops and is named.
        r1_only = [m for m in fan_out(messages[half:], robots) if m[1].startswith("/r1/")]
        live.probe.replay(r1_only)
        r1_chunks = len(live.probes["r1"].result.chunks) - both["r1"]
        r2_chunks = len(live.probes["r2"].result.chunks) - both["r2"]
        assert r1_chunks >= 3 and r2_chunks <= 1, (r1_chunks, r2_chunks)
        assert wait_until(lambda: any(
            s.name == "bac_ros: policy r2" and s.level == DiagnosticStatus.WARN and
            "/r2/camera/image_raw" in s.message for s in diags), 3)
        assert not any(s.name == "bac_ros: policy r1" and "/r1/" in s.message
                       for s in diags[-6:])
        assert node.robots[1].counters["chunks"] == both["r2"] + r2_chunks
