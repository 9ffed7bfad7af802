"""Real, tiny, seeded DP-T policies for tests, CI and benchmarks (no files, no downloads).

Not mocks: every function builds the production classes with random weights.
"""

from __future__ import annotations

import numpy as np
import torch

from bac_ros.engine.config import (
    NoiseSchedulerConfig,
    ObsEncoderConfig,
    PolicyConfig,
    ShapeMeta,
    TransformerConfig,
)
from bac_ros.engine.dp_export import dp_cfg, save_dp_checkpoint  # noqa: F401 (re-export)
from bac_ros.engine.normalizer import image_range_params
from bac_ros.engine.policy import DiffusionPolicy


def tiny_config(kind: str = "lowdim", n_layer: int = 2, n_emb: int = 32, n_head: int = 4,
                scheduler: str = "ddpm", num_inference_steps: int = 100,
                horizon: int | None = None, image_hw: int = 32) -> PolicyConfig:
    if kind == "lowdim":
        obs = {"keypoints": {"shape": [16], "type": "low_dim"},
               "agent_pos": {"shape": [2], "type": "low_dim"}}
        enc, cond_dim, horizon = None, 18, horizon or 16
    elif kind == "image":
        obs = {"image": {"shape": [3, image_hw, image_hw], "type": "rgb"},
               "agent_pos": {"shape": [2], "type": "low_dim"}}
        # robomimic's defaults (32 keypoints, 64 features), as diffusion_policy uses them.
        enc = ObsEncoderConfig(crop_shape=(image_hw - 4, image_hw - 4))
        cond_dim, horizon = enc.feature_dim + 2, horizon or 10
    else:
        raise ValueError(f"kind must be 'lowdim' or 'image'. Got {kind!r}.")
    return PolicyConfig(
        shape_meta=ShapeMeta(obs=obs, action_shape=[2]),
        transformer=TransformerConfig(input_dim=2, output_dim=2, horizon=horizon, n_obs_steps=2,
                                      cond_dim=cond_dim, n_layer=n_layer, n_head=n_head,
                                      n_emb=n_emb),
        scheduler=NoiseSchedulerConfig(type=scheduler, num_inference_steps=num_inference_steps),
        obs_encoder=enc, horizon=horizon, n_obs_steps=2, n_action_steps=8,
        action_names=["agent_x", "agent_y"],
        obs_low_dim_names={"agent_pos": ["agent_x", "agent_y"]},
        control_period_s=0.1, name=f"tiny_{kind}",
    )


def make_tiny_policy(kind: str = "lowdim", seed: int = 0, **kwargs) -> DiffusionPolicy:
    """A seeded random DP-T with a Push-T-like normalizer (positions in [0, 512] px)."""
    from bac_ros.engine.checkpoint import fingerprint_policy

    torch.manual_seed(seed)
    policy = DiffusionPolicy(tiny_config(kind, **kwargs))
    rng = np.random.default_rng(seed)
    for key, spec in policy.config.shape_meta.obs.items():
        if spec.type == "rgb":
            policy.normalizer.set_field(key, image_range_params())
        else:
            policy.normalizer.fit_field(key, rng.uniform(0, 512, (64, spec.shape[0])))
    policy.normalizer.fit_field("action", rng.uniform(0, 512, (64, 2)))
    policy.eval()
    policy.fingerprint = fingerprint_policy(policy)
    return policy


def random_obs(policy: DiffusionPolicy, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """A plausible observation history for ``policy`` (B, To, *shape), float32."""
    rng = np.random.default_rng(seed)
    To = policy.config.n_obs_steps
    out = {}
    for key, spec in policy.config.shape_meta.obs.items():
        hi = 1.0 if spec.type == "rgb" else 512.0
        out[key] = rng.uniform(0, hi, (batch, To, *spec.shape)).astype(np.float32)
    return out


def lowdim_dp_policy(seed: int = 0, **kwargs) -> DiffusionPolicy:
    """A tiny policy laid out as diffusion_policy's lowdim policy (one 'obs' key)."""
    from bac_ros.engine.checkpoint import fingerprint_policy

    cfg = tiny_config("lowdim", **kwargs)
    cfg = PolicyConfig(
        shape_meta=ShapeMeta(obs={"obs": {"shape": [20], "type": "low_dim"}}, action_shape=[2]),
        transformer=TransformerConfig(**{**cfg.transformer.__dict__, "cond_dim": 20}),
        scheduler=cfg.scheduler, horizon=cfg.horizon, n_obs_steps=2, n_action_steps=8,
    )
    torch.manual_seed(seed)
    policy = DiffusionPolicy(cfg)
    rng = np.random.default_rng(seed)
    policy.normalizer.fit_field("obs", rng.uniform(0, 512, (64, 20)))
    policy.normalizer.fit_field("action", rng.uniform(0, 512, (64, 2)))
    policy.fingerprint = fingerprint_policy(policy)
    return policy
