"""Feature capture: every block's residual delta at every step, at full compute.

Uses the model's ``observer`` argument for the duration of the call only: no
hooks stay registered, the inference path is untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm


@torch.no_grad()
def capture_features(policy, observations: Iterable[Mapping], seeds: Iterable[int],
                     progress: bool = True) -> torch.Tensor:
    """Return features (n_blocks, N, K, D) with N = len(observations) * len(seeds).

    Each observation is one history dict shaped (1, To, *shape). Features are kept
    in float32 on the CPU (n_blocks * N * K * T * C floats: small for DP-T).
    """
    observations, seeds = list(observations), list(seeds)
    if not observations:
        raise ValueError("calibration needs at least one observation; the source was empty.")
    if not seeds:
        raise ValueError("calibration needs at least one noise seed.")
    n_blocks, K = len(policy.model.blocks()), policy.num_inference_steps
    samples: list[torch.Tensor] = []
    total = len(observations) * len(seeds)
    bar = tqdm(total=total, desc="calibration forward passes", disable=not progress)
    for obs in observations:
        cond = policy.encode_condition(obs)
        if cond.shape[0] != 1:
            raise ValueError(f"calibration observations must have batch 1; got {cond.shape[0]}.")
        for seed in seeds:
            gen = torch.Generator().manual_seed(int(seed))
            noise = policy.make_noise(1, gen)
            feats: list[list[torch.Tensor | None]] = [[None] * K for _ in range(n_blocks)]

            def observer(k, b, delta, feats=feats):
                feats[b][k] = delta[0].float().flatten().cpu()

            policy.denoise(cond, noise, observer=observer, generator=gen)
            samples.append(torch.stack([torch.stack(f) for f in feats]))  # (n_blocks, K, D)
            bar.update(1)
    bar.close()
    return torch.stack(samples, dim=1)  # (n_blocks, N, K, D)


def _subsample(items: list, limit: int) -> list:
    """At most ``limit`` items spread evenly over the source (not just its first seconds)."""
    if len(items) <= limit:
        return items
    idx = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in idx]


def _array_observations(arrays: Mapping, policy, path: Path, limit: int) -> list[dict]:
    """Arrays keyed by observation key, each (N, n_obs_steps, *shape) -> N history dicts."""
    pc = policy.config
    keys = list(pc.shape_meta.obs)
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing observation arrays {missing}; it has "
                         f"{sorted(arrays)}. Store one (N, n_obs_steps, *shape) array per key.")
    n = min(len(arrays[k]) for k in keys)
    if n == 0:
        raise ValueError(f"{path}: holds no observations (N = 0); record some first.")
    for k in keys:
        want = (pc.n_obs_steps, *pc.shape_meta.obs[k].shape)
        got = tuple(arrays[k].shape[1:])
        if got != want:
            raise ValueError(f"{path}: array {k!r} has per-sample shape {got}, the policy expects "
                             f"{want} (n_obs_steps, *shape_meta shape). Wrong dataset/policy?")
    idx = _subsample(list(range(n)), limit)
    return [{k: np.asarray(arrays[k][i:i + 1], dtype=np.float32) for k in keys} for i in idx]


def load_observations(source: str | Path, policy, limit: int) -> list[dict]:
    """Calibration observations from a file: ``.npz``, a zarr store, or a rosbag2.

    npz / zarr: one array per observation key shaped (N, n_obs_steps, *shape). rosbag2
    (directory or .mcap/.db3): through the node's own preprocessing
    (``bac_ros.node.bag_observations.iter_bag_observations``), imported lazily so BAC itself
    never depends on ROS.
    """
    if limit < 1:
        raise ValueError(f"observation limit must be >= 1. Got {limit}.")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"calibration source {path} does not exist.")
    if path.suffix == ".npz":
        with np.load(path) as data:
            return _array_observations({k: data[k] for k in data.files}, policy, path, limit)
    if path.suffix == ".zarr" or (path / ".zgroup").exists() or (path / "zarr.json").exists():
        try:
            import zarr
        except ImportError as exc:
            raise ImportError(f"{path} is a zarr store but the `zarr` package is not "
                              "installed: `pip install zarr`, or convert it to .npz.") from exc
        return _array_observations(zarr.open(str(path), mode="r"), policy, path, limit)
    try:
        from bac_ros.node.bag_observations import iter_bag_observations
    except ImportError as exc:
        raise ImportError(f"{path} looks like a rosbag2 but bag reading is unavailable ({exc}); "
                          "source ROS 2 or install the ros extras, or pass an .npz.") from exc
    obs = list(iter_bag_observations(path, policy))
    if not obs:
        raise ValueError(f"{path}: no complete observation history in this bag (check the "
                         "topic names and that camera and joint-state stamps overlap).")
    return _subsample(obs, limit)
