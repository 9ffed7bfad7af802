"""Session-wide ROS isolation (unique ROS_DOMAIN_ID, localhost discovery) and shared
fixtures: a tiny real image DP-T checkpoint + BAC schedule, the bundled bag."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bac_ros.bac.baselines import build_schedule
from bac_ros.bac.schedule import save_schedule
from bac_ros.engine.checkpoint import save_policy
from bac_ros.engine.testing import make_tiny_policy

VENV = Path(sys.executable).resolve().parent.parent
_domain = 1 + (os.getpid() % 200)  # 1..200: never the default 0, never a neighbour's run
os.environ["ROS_DOMAIN_ID"] = str(_domain)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("AMENT_PREFIX_PATH", str(Path(sys.prefix)))
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session", autouse=True)
def _stop_ros2_daemon():
    yield
    ros2 = Path(sys.prefix) / "bin" / "ros2"
    if ros2.exists():
        subprocess.run([str(ros2), "daemon", "stop"], capture_output=True, timeout=30,
                       env=dict(os.environ))


BAG = Path(__file__).resolve().parents[1] / "data" / "pusht" / "pusht_rollout"


def make_tiny_files(d: Path, kind: str, steps: int, budget: int) -> dict:
    """A tiny real DP-T (DDIM-``steps``) saved as a checkpoint + a uniform BAC schedule."""
    p = make_tiny_policy(kind, num_inference_steps=steps, scheduler="ddim")
    ckpt = save_policy(p, d / f"tiny_{kind}.safetensors")
    sched = build_schedule("uniform", p.model.blocks(), steps, budget, p.fingerprint, "ddim")
    path = save_schedule(sched, d / f"tiny_{kind}.yaml")
    return {"checkpoint": str(ckpt), "schedule": str(path), "policy": p, "sched": sched,
            "dir": d}


@pytest.fixture(scope="session")
def tiny_files_factory(tmp_path_factory):
    return lambda kind, steps, budget: make_tiny_files(
        tmp_path_factory.mktemp(f"tiny_{kind}"), kind, steps, budget)


@pytest.fixture(scope="session")
def tiny_files(tiny_files_factory):
    return tiny_files_factory("image", 10, 4)


@pytest.fixture(scope="session")
def bag():
    return BAG


def _stop_group(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """SIGINT to the process group (as Ctrl-C would), SIGKILL if it is still there."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _group_output(proc: subprocess.Popen) -> str:
    """Stop ``proc`` and return the end of its output (for assertion messages)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.communicate(timeout=10)[0][-3000:]
    except subprocess.TimeoutExpired:
        return "(no output)"


@pytest.fixture
def process_group():
    """``start(cmd, **popen_kwargs)`` runs a command in its own process group, stdout and
    stderr captured as text; every process started is stopped when the test ends.
    ``start.output(proc)`` stops one and returns the end of its output."""
    started = []

    def start(cmd, **kwargs):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True, **kwargs)
        started.append(proc)
        return proc

    start.output = _group_output
    yield start
    for proc in started:
        _stop_group(proc)
