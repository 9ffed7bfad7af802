"""The `bac` command: every subcommand has --help; bench and replay produce real numbers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BAC = [sys.executable, "-m", "bac_ros.cli.main"]
BAG = Path(__file__).resolve().parents[2] / "data" / "pusht" / "pusht_expert"


@pytest.mark.parametrize("cmd", ["convert", "calibrate", "bench", "eval", "train", "replay",
                                 "soak"])
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
