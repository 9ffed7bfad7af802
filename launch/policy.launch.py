"""Launch the bac_ros policy node.

    ros2 launch bac_ros policy.launch.py checkpoint:=/path/policy.safetensors \
        schedule:=/path/schedule.yaml device:=cuda image_topic:=/camera/color/image_raw
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def bundled_policy(policies_dir: str) -> tuple[str, str]:
    """The bundled Push-T policy and its schedule: the image policy when shipped, else the
    low-dim one (the default must point at a file that exists, or `ros2 launch` fails)."""
    for name in ("pusht_image", "pusht_lowdim"):
        ckpt = os.path.join(policies_dir, f"{name}.safetensors")
        if os.path.exists(ckpt):
            sched = os.path.join(policies_dir, f"{name}.schedule.yaml")
            return ckpt, sched if os.path.exists(sched) else ""
    return os.path.join(policies_dir, "pusht_image.safetensors"), ""


def generate_launch_description():
    share = get_package_share_directory("bac_ros")
    data = os.path.join(share, "data")
    default_ckpt, default_sched = bundled_policy(os.path.join(data, "policies"))
    args = [
        DeclareLaunchArgument("checkpoint", default_value=default_ckpt,
                              description="policy checkpoint (.safetensors or .ckpt)"),
        DeclareLaunchArgument("schedule", default_value=default_sched,
                              description="BAC cache schedule from `bac calibrate` ('' = off)"),
        DeclareLaunchArgument("device", default_value="cpu", description="cpu, cuda, cuda:N"),
        DeclareLaunchArgument("dtype", default_value="float32",
                              description="float32, float16 or bfloat16"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument("params_file",
                              default_value=os.path.join(share, "config", "policy.yaml"),
                              description="ROS parameters file (defaults with comments)"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="camera topic remap"),
        DeclareLaunchArgument("joint_state_topic", default_value="/joint_states",
                              description="joint state topic remap"),
        DeclareLaunchArgument("command_topic", default_value="~/command",
                              description="control-rate command stream topic"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (bag replay, simulation)"),
        DeclareLaunchArgument("log_level", default_value="info", description="logger level"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="lifecycle: configure and activate at start (false: "
                                          "wait for `ros2 lifecycle set`)"),
    ]
    node = Node(
        package="bac_ros", executable="policy_node", name="bac_policy",
        namespace=LaunchConfiguration("namespace"), output="screen", emulate_tty=True,
        parameters=[LaunchConfiguration("params_file"), {
            "checkpoint": LaunchConfiguration("checkpoint"),
            "schedule": LaunchConfiguration("schedule"),
            "device": LaunchConfiguration("device"),
            "dtype": LaunchConfiguration("dtype"),
            "use_sim_time": LaunchConfiguration("use_sim_time"),
            "autostart": LaunchConfiguration("autostart"),
        }],
        remappings=[("/camera/image_raw", LaunchConfiguration("image_topic")),
                    ("/joint_states", LaunchConfiguration("joint_state_topic")),
                    ("~/command", LaunchConfiguration("command_topic"))],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
    )
    return LaunchDescription([*args, node])
