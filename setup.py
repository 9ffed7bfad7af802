"""Python install of bac_ros (the `bac` console script, editable development installs).

The ROS package build (messages, launch/config install, ament index) is CMakeLists.txt;
scripts/bootstrap.sh runs both for a venv without a ROS install.
"""

from setuptools import find_packages, setup

setup(
    name="bac_ros",
    version="0.1.0",
    description="Real-time ROS 2 diffusion-policy node accelerated by Block-wise Adaptive Caching",
    license="Apache-2.0",
    maintainer="bac_ros maintainers",
    maintainer_email="maintainers@bac-ros.dev",
    packages=find_packages(include=["bac_ros", "bac_ros.*"]),
    python_requires=">=3.10",
    entry_points={"console_scripts": [
        "bac = bac_ros.cli.main:main",
        "policy_node = bac_ros.node.policy_node:main",
    ]},
)
