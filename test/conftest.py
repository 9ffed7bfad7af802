"""Session-wide ROS isolation: a unique ROS_DOMAIN_ID per run, localhost-only discovery."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
