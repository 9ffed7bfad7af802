"""The `bac` command: every subcommand has --help; bench and replay produce real numbers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BAC = [sys.executable, "-m", "bac_ros.cli.main"]
BAG = Path(__file__).resolve().parents[2] / "data" / "pusht" / "pusht_expert"


@pytest.mark.parametrize("cmd", ["convert", "calibrate", "bench", "eval", "train", "replay",
                                 "play", "soak"])
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
                    "action_rel_err", "blocks_computed_frac"):
            assert key in r
        assert r["chunk_ms_p50"] > 0
    full = [r for r in rows if r["method"] == "full"]
    assert all(r["action_rel_err"] == 0 and r["blocks_computed_frac"] == 1 for r in full)


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


def test_replay_exits_nonzero_when_no_chunk(tiny_files):
    """A bag whose topics do not reach the node: rejection/skip report, exit code 1."""
    out = subprocess.run([*BAC, "replay", str(BAG), "--checkpoint", tiny_files["checkpoint"],
                          "--schedule", tiny_files["schedule"], "--remap",
                          "/camera/image_raw:=/nowhere", "--rate", "4.0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout[-1000:] + out.stderr[-1000:]
    assert "no action chunk" in out.stderr


def test_play_feeds_a_node_started_elsewhere(tiny_files):
    """`bac play BAG` publishes on live topics with header stamps kept (shifted to now): a
    node started in another process (the real policy_node executable) produces chunks whose
    stamps follow the bag's header stamps."""
    import os
    import signal
    import time

    import rclpy
    from bac_ros.msg import ActionChunk
    from rclpy.node import Node

    node_cmd = [sys.executable, "-m", "bac_ros.node.policy_node", "--ros-args",
                "-p", f"checkpoint:={tiny_files['checkpoint']}",
                "-p", f"schedule:={tiny_files['schedule']}"]
    proc = subprocess.Popen(node_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
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
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
