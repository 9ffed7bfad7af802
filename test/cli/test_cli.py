"""The `bac` command: every subcommand has --help; bench and replay produce real numbers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BAC = [sys.executable, "-m", "bac_ros.cli.main"]
BAG = Path(__file__).resolve().parents[2] / "data" / "pusht" / "pusht_rollout"


@pytest.mark.parametrize("cmd", ["convert", "calibrate", "bench", "eval", "train", "replay",
                                 "play", "record", "handover", "soak"])
def test_help(cmd):
    """`bac <cmd> --help` works for every subcommand."""
    out = subprocess.run([*BAC, cmd, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "usage: bac " + cmd in out.stdout


def test_bench_json_structure():
    """`bac bench --json` runs every method for DDPM and DDIM and reports the fields."""
    out = subprocess.run([*BAC, "bench", "--random-policy", "lowdim", "--n-layer", "2",
                          "--n-emb", "32", "--ddpm-steps", "20", "--ddim-steps", "5",
                          "--budget", "4", "--ddim-budget", "2", "--repeats", "2", "--json"],
                         capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    assert {(r["scheduler"], r["method"]) for r in rows} == {
        (s, m) for s in ("ddpm", "ddim") for m in ("full", "uniform", "shared_acs", "acs", "bac")}
    for r in rows:
        for key in ("method", "steps", "chunk_ms_p50", "chunk_ms_p99", "speedup_vs_full",
                    "action_rel_err", "blocks_computed_frac", "backend", "dtype"):
            assert key in r
        assert r["chunk_ms_p50"] > 0
    full = [r for r in rows if r["method"] == "full"]
    assert all(r["action_rel_err"] == 0 and r["blocks_computed_frac"] == 1 for r in full)



def test_bench_single_method_times_full_as_reference():
    """`--methods uniform` alone still has its speedup column (full is always timed; it
    used to crash formatting a missing reference)."""
    out = subprocess.run([*BAC, "bench", "--random-policy", "lowdim", "--n-layer", "2",
                          "--n-emb", "32", "--ddpm-steps", "10", "--ddim-steps", "0",
                          "--budget", "3", "--repeats", "1", "--methods", "uniform"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| DDPM | full |" in out.stdout and "| DDPM | uniform |" in out.stdout


def test_bench_compile_rows():
    """`--compile` adds compiled rows (backend inductor) beside the eager ones, each with its
    speedup over full compute on the same backend and the same actions."""
    out = subprocess.run([*BAC, "bench", "--random-policy", "lowdim", "--n-layer", "2",
                          "--n-emb", "32", "--ddpm-steps", "10", "--ddim-steps", "0",
                          "--budget", "3", "--repeats", "1", "--methods", "uniform",
                          "--compile", "--json"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {r["method"]: r for r in json.loads(out.stdout)}
    assert set(rows) == {"full", "uniform", "full [compiled]", "uniform [compiled]"}
    assert rows["uniform [compiled]"]["backend"] == "inductor" == rows["full [compiled]"]["backend"]
    assert rows["uniform"]["backend"] == "eager" and rows["uniform"]["dtype"] == "float32"
    assert rows["full [compiled]"]["speedup_vs_backend_full"] == 1.0
    assert abs(rows["uniform [compiled]"]["action_rel_err"] - rows["uniform"]["action_rel_err"]) \
        < 1e-4

def test_replay_cli_reports_latency(tiny_files):
    """`bac replay BAG --compare-full --json` runs the node twice and reports both."""
    out = subprocess.run([*BAC, "replay", str(BAG), "--checkpoint", tiny_files["checkpoint"],
                          "--schedule", tiny_files["schedule"], "--compare-full", "--json",
                          "--rate", "2.0"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rep = json.loads(out.stdout[out.stdout.index("{"):])
    assert rep["bac"]["chunks"] > 3 and rep["full"]["chunks"] > 3
    assert rep["bac"]["bac_enabled"] and not rep["full"]["bac_enabled"]
    assert rep["bac"]["blocks_computed_frac"] < rep["full"]["blocks_computed_frac"] == 1.0
    # the tiny policy's inference (~10 ms) is far below the chunk: the stream never holds
    assert rep["bac"]["held_ticks_while_serving"] == 0, rep["bac"]
    assert rep["bac"]["preprocess_ms_p50"] > 0  # the image stage is timed


def test_replay_exits_nonzero_when_no_chunk(tiny_files):
    """A bag whose topics do not reach the node: rejection/skip report, exit code 1."""
    out = subprocess.run([*BAC, "replay", str(BAG), "--checkpoint", tiny_files["checkpoint"],
                          "--schedule", tiny_files["schedule"], "--remap",
                          "/camera/image_raw:=/nowhere", "--rate", "4.0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout[-1000:] + out.stderr[-1000:]
    assert "no action chunk" in out.stderr


def test_play_feeds_a_node_started_elsewhere(tiny_files, process_group):
    """`bac play BAG` publishes on live topics with header stamps kept (shifted to now): a
    node started in another process (the real policy_node executable) produces chunks whose
    stamps follow the bag's header stamps."""
    import time

    import rclpy
    from bac_ros.msg import ActionChunk
    from rclpy.node import Node

    node_cmd = [sys.executable, "-m", "bac_ros.node.policy_node", "--ros-args",
                "-p", f"checkpoint:={tiny_files['checkpoint']}",
                "-p", f"schedule:={tiny_files['schedule']}"]
    process_group(node_cmd)
    rclpy.init()
    sub = Node("play_test_probe")
    chunks = []
    sub.create_subscription(ActionChunk, "/bac_policy/action_chunk", chunks.append, 50)
    try:
        time.sleep(4.0)  # node start-up (model load, warm-up)
        play = subprocess.Popen([*BAC, "play", str(BAG), "--json"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + 60
        while play.poll() is None and time.monotonic() < end:
            rclpy.spin_once(sub, timeout_sec=0.1)
        out, err = play.communicate(timeout=30)
        assert play.returncode == 0, err[-2000:]
        info = json.loads(out[out.index("{"):])
        assert info["published"] > 1000 and "/camera/image_raw" in info["topics"]
        for _ in range(20):
            rclpy.spin_once(sub, timeout_sec=0.1)
        assert len(chunks) >= 5
        stamps = [c.header.stamp.sec + c.header.stamp.nanosec * 1e-9 for c in chunks]
        assert abs(stamps[-1] - time.time()) < 30  # shifted to now, not the bag's old stamps
    finally:
        sub.destroy_node()
        rclpy.try_shutdown()


def test_record_bag_driven_by_a_policy(tmp_path):
    """`bac record --policy P`: a real rosbag2 (camera + joint states) in which P moves the
    agent in closed loop; the same seed gives the same bag; an existing output is refused."""
    import numpy as np

    from bac_ros.engine.checkpoint import save_policy
    from bac_ros.engine.testing import make_tiny_policy
    from bac_ros.node.replay import read_bag

    pol = save_policy(make_tiny_policy("image", num_inference_steps=4, scheduler="ddim",
                                       image_hw=96), tmp_path / "p.safetensors")
    outs = []
    for name in ("a", "b"):
        r = subprocess.run([*BAC, "record", str(tmp_path / name), "--policy", str(pol),
                            "--duration-s", "1.5", "--seed", "3", "--json"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        outs.append(read_bag(tmp_path / name))
    assert json.loads(r.stdout)["driver"] == str(pol)
    topics = {m[1] for m in outs[0]}
    assert topics == {"/camera/image_raw", "/joint_states"}
    assert [m[3] for m in outs[0]] == [m[3] for m in outs[1]]  # deterministic
    again = subprocess.run([*BAC, "record", str(tmp_path / "a"), "--policy", str(pol)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "exists" in again.stderr
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    js = [ts.deserialize_cdr(raw, typ) for _, topic, typ, raw in outs[0]
          if topic == "/joint_states"]
    agent = np.array([m.position[:2] for m in js])
    assert np.ptp(agent, axis=0).max() > 1.0  # the policy moved the agent
