"""Calibration end to end: features, schedule file, plots, fidelity table, CLI."""

import json
import subprocess
import sys

import numpy as np

from bac_ros.bac.calibrate import CalibrationConfig, calibrate
from bac_ros.bac.schedule import load_schedule
from bac_ros.engine.checkpoint import save_policy
from bac_ros.engine.testing import make_tiny_policy, random_obs


def test_calibrate_pipeline(tmp_path):
    """BAC schedule saved and loadable, plots written, every method in the table."""
    p = make_tiny_policy("lowdim", n_layer=2, num_inference_steps=20)
    obs = [random_obs(p, seed=i) for i in range(2)]
    res = calibrate(p, obs, CalibrationConfig(budget=4, bua_top_n=3, seeds=[0, 1],
                                              eval_samples=2, timing_repeats=1),
                    tmp_path / "s.yaml", progress=False)
    sched = load_schedule(tmp_path / "s.yaml", policy=p)
    assert sched.method == "bac" and len(sched.bua_selected) == 3
    assert all(len(s) >= 4 for s in sched.update_steps)
    assert res.similarity.shape == (6, 20, 20)
    np.testing.assert_allclose(np.diagonal(res.similarity, axis1=1, axis2=2), 1.0, atol=1e-6)
    assert {r["method"] for r in res.table} == {"full", "uniform", "shared_acs", "acs", "bac"}
    assert res.stability["samples"] == 4
    for key in ("similarity_png", "schedule_png", "error_png"):
        assert (tmp_path / res.files[key].split("/")[-1]).stat().st_size > 1000


def test_calibrate_cli_json(tmp_path):
    """`bac calibrate --json` on an npz source prints the schedule and table."""
    p = make_tiny_policy("lowdim", n_layer=2, num_inference_steps=10)
    ckpt = save_policy(p, tmp_path / "p.safetensors")
    obs = random_obs(p, batch=3)
    np.savez(tmp_path / "obs.npz", **obs)
    out = subprocess.run(
        [sys.executable, "-m", "bac_ros.cli.main", "calibrate", str(ckpt), "--source",
         str(tmp_path / "obs.npz"), "--steps-budget", "3", "--bua-top-n", "2", "--samples", "2",
         "--seeds", "0", "1",
         "--eval-samples", "1", "--timing-repeats", "1", "--out", str(tmp_path / "s.yaml"),
         "--json", "--no-plots"], capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    assert data["schedule"]["num_steps"] == 10 and data["schedule"]["budget"] == 3
    assert len(data["table"]) == 5
    assert data["schedule"]["calibration"]["samples"] == 4  # 2 observations x 2 seeds
    assert data["stability"]["samples"] == 4
    assert 0.0 <= data["stability"]["pairwise_mean_jaccard"] <= 1.0
    full = next(r for r in data["table"] if r["method"] == "full")
    assert full["action_err_max"] == 0.0 and full["blocks_computed_frac"] == 1.0
