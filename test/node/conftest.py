"""Fixtures for node tests: a tiny real image DP-T checkpoint + BAC schedule on disk."""

from pathlib import Path

import pytest

from bac_ros.bac.baselines import build_schedule
from bac_ros.bac.schedule import save_schedule
from bac_ros.engine.checkpoint import save_policy
from bac_ros.engine.testing import make_tiny_policy

BAG = Path(__file__).resolve().parents[2] / "data" / "pusht" / "pusht_scripted"


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("node")
    p = make_tiny_policy("image", num_inference_steps=10, scheduler="ddim")
    ckpt = save_policy(p, d / "tiny_image.safetensors")
    sched = build_schedule("uniform", p.model.blocks(), 10, 4, p.fingerprint, "ddim")
    path = save_schedule(sched, d / "tiny_image.yaml")
    return {"checkpoint": str(ckpt), "schedule": str(path), "policy": p, "sched": sched,
            "dir": d}


@pytest.fixture(scope="session")
def bag():
    return BAG
