"""The ROS package is real: generated messages, ament index, launch file, lint."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.prefix) / "bin"


def test_messages_roundtrip_rclpy_serialization():
    """rosidl-generated ActionChunk / InferenceLatency serialize and deserialize via rclpy."""
    from bac_ros.msg import ActionChunk, InferenceLatency
    from rclpy.serialization import deserialize_message, serialize_message

    m = ActionChunk(action_names=["agent_x", "agent_y"], action_period_s=0.1, horizon=3,
                    action_dim=2, n_execute=2, chunk_id=7, schedule_id="abc")
    m.actions = np.arange(6, dtype=np.float32)
    back = deserialize_message(serialize_message(m), ActionChunk)
    assert back.action_names == ["agent_x", "agent_y"] and back.chunk_id == 7
    np.testing.assert_array_equal(np.asarray(back.actions), np.arange(6))
    lat = InferenceLatency(total_ms=12.5, denoise_ms=10.0, blocks_computed=3, bac_enabled=True)
    back = deserialize_message(serialize_message(lat), InferenceLatency)
    assert back.total_ms == 12.5 and back.bac_enabled


def _ros2(*args):
    return subprocess.run([str(BIN / "ros2"), *args], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))


def test_ros2_pkg_prefix():
    """`ros2 pkg prefix bac_ros` finds the package in the ament index."""
    out = _ros2("pkg", "prefix", "bac_ros")
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve() == Path(sys.prefix).resolve()


def test_launch_show_args():
    """`ros2 launch bac_ros policy.launch.py --show-args` lists the launch arguments."""
    out = _ros2("launch", "bac_ros", "policy.launch.py", "--show-args")
    assert out.returncode == 0, out.stderr
    for arg in ("checkpoint", "schedule", "device", "namespace", "params_file"):
        assert f"'{arg}'" in out.stdout


def test_package_xml_is_valid_for_catkin_pkg():
    """package.xml parses with catkin_pkg (an invalid one silently breaks `ros2 launch`)."""
    from catkin_pkg.package import parse_package

    pkg = parse_package(str(ROOT / "package.xml"))
    assert pkg.name == "bac_ros" and pkg.package_format == 3
    pkg.validate()


def test_ruff_clean():
    """The code base passes ruff (line length 99)."""
    out = subprocess.run([str(BIN / "ruff"), "check", "bac_ros", "test", "launch"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]


def test_cmake_configures_for_colcon(tmp_path):
    """CMakeLists.txt configures as colcon runs it (Python sources installed, the default) and
    installs our sources after rosidl's generated package, so our __init__.py wins."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("CMakeLists.txt", "package.xml"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "msg", src / "msg")
    venv = Path(sys.prefix)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(venv), CMAKE_PREFIX_PATH=str(venv),
               PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               LD_LIBRARY_PATH=f"{venv / 'lib'}{os.pathsep}{os.environ.get('LD_LIBRARY_PATH', '')}")
    build = tmp_path / "build"
    out = subprocess.run(["cmake", "-S", str(src), "-B", str(build), "-DBUILD_TESTING=OFF",
                          f"-DPython3_EXECUTABLE={sys.executable}",
                          f"-DCMAKE_INSTALL_PREFIX={tmp_path / 'install'}"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    rules = (build / "cmake_install.cmake").read_text()
    generated = rules.find("rosidl_generator_py/bac_ros/")
    ours = rules.find(f'"{src / "bac_ros"}/"')
    assert generated >= 0 and ours > generated, "bac_ros sources must install after rosidl's"


def test_colcon_build_and_run_from_the_install(tmp_path):
    """The README's robot path, with the pip-installed ROS 2 toolchain: the package's tracked
    files in ws/src/bac_ros, `colcon build`, `source install/setup.bash`, then `ros2 run
    bac_ros policy_node --help`, `ros2 run bac_ros bac --help` and `ros2 launch bac_ros
    policy.launch.py --show-args` resolve to the colcon install (not the venv's copy), and the
    generated messages import from it."""
    ws = tmp_path / "ws"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    for rel in filter(None, files):
        rel = rel.decode()
        if (ROOT / rel).is_file():
            (ws / "src" / "bac_ros" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, ws / "src" / "bac_ros" / rel)
    venv = Path(sys.prefix)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(venv), CMAKE_PREFIX_PATH=str(venv),
               PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               LD_LIBRARY_PATH=f"{venv / 'lib'}{os.pathsep}{os.environ.get('LD_LIBRARY_PATH', '')}")
    build = subprocess.run([str(venv / "bin" / "colcon"), "build", "--packages-select", "bac_ros",
                            "--event-handlers", "console_direct-", "--cmake-args",
                            "-DBUILD_TESTING=OFF", f"-DPython3_EXECUTABLE={sys.executable}"],
                           cwd=ws, env=env, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, (build.stdout + build.stderr)[-3000:]
    script = f"""set -e
source {ws}/install/setup.bash
ros2 pkg prefix bac_ros
ros2 run bac_ros policy_node --help
ros2 run bac_ros bac --help
ros2 launch bac_ros policy.launch.py --show-args
python -c 'import bac_ros, bac_ros.msg; print("PKG", bac_ros.__file__); print("MSG", bac_ros.msg.__file__)'
"""
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)  # not the repo: its bac_ros/ would shadow
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    install = str(ws / "install" / "bac_ros")
    lines = out.stdout.splitlines()
    assert lines[0] == install
    assert "usage: policy_node" in out.stdout and "usage: bac" in out.stdout
    assert "'checkpoint':" in out.stdout and f"{install}/share/bac_ros/data/policies" in out.stdout
    pkg = next(line for line in lines if line.startswith("PKG "))
    msg = next(line for line in lines if line.startswith("MSG "))
    assert install in pkg and install in msg, (pkg, msg)
