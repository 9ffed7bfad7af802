"""bac_ros: a real-time ROS 2 node for transformer diffusion policies, accelerated by BAC.

Layout: ``engine`` (model, schedulers, policy; no ROS), ``bac`` (calibration,
schedules, cached execution; no ROS), ``node`` (the ROS 2 node), ``pusht``
(reference task, demos, training, evaluation), ``cli`` (the ``bac`` command).
"""

import pkgutil

# The rosidl-generated ``bac_ros.msg`` is installed into site-packages as a namespace
# portion (scripts/bootstrap.sh, colcon); merge it with these sources.
__path__ = pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"


def load_policy(path, **kwargs):
    """Load a policy checkpoint (ours or diffusion_policy's). See engine.checkpoint."""
    from bac_ros.engine.checkpoint import load_policy as _load

    return _load(path, **kwargs)
