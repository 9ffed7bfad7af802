"""Real, tiny, seeded DP-T policies for tests, CI and benchmarks (no files, no downloads).

Not mocks: every function builds the production classes with random weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bac_ros.engine.config import (
    NoiseSchedulerConfig,
    ObsEncoderConfig,
    PolicyConfig,
    ShapeMeta,
    TransformerConfig,
)
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


def dp_cfg(policy: DiffusionPolicy, use_ema: bool = True):
    """An OmegaConf cfg shaped like diffusion_policy's workspace configs (with ${eval:})."""
    from omegaconf import OmegaConf

    c, t, s = policy.config, policy.config.transformer, policy.config.scheduler
    scheduler = {"_target_": "diffusers.schedulers.scheduling_ddpm.DDPMScheduler",
                 "num_train_timesteps": s.num_train_timesteps, "beta_start": s.beta_start,
                 "beta_end": s.beta_end, "beta_schedule": s.beta_schedule,
                 "variance_type": s.variance_type, "clip_sample": s.clip_sample,
                 "prediction_type": s.prediction_type}
    common = {"horizon": "${horizon}", "n_action_steps": "${n_action_steps}",
              "n_obs_steps": "${n_obs_steps}", "num_inference_steps": s.num_inference_steps,
              "noise_scheduler": scheduler}
    top = {"horizon": c.horizon, "n_obs_steps": c.n_obs_steps,
           "n_action_steps": c.n_action_steps, "obs_as_cond": True,
           "training": {"use_ema": use_ema, "seed": 42}, "name": "train_test"}
    if not c.shape_meta.rgb_keys:
        obs_dim = c.shape_meta.obs["obs"].shape[0]
        top.update(obs_dim=obs_dim, action_dim=c.shape_meta.action_dim)
        model = {"_target_": "diffusion_policy.model.diffusion.transformer_for_diffusion."
                             "TransformerForDiffusion",
                 "input_dim": "${eval:'${action_dim} if ${obs_as_cond} else ${obs_dim} + "
                              "${action_dim}'}",
                 "output_dim": "${action_dim}", "horizon": "${horizon}",
                 "n_obs_steps": "${n_obs_steps}",
                 "cond_dim": "${eval:'${obs_dim} if ${obs_as_cond} else 0'}",
                 "n_layer": t.n_layer, "n_head": t.n_head, "n_emb": t.n_emb,
                 "p_drop_emb": t.p_drop_emb, "p_drop_attn": t.p_drop_attn,
                 "causal_attn": t.causal_attn, "time_as_cond": t.time_as_cond,
                 "obs_as_cond": "${obs_as_cond}", "n_cond_layers": t.n_cond_layers}
        policy_cfg = {"_target_": "diffusion_policy.policy.diffusion_transformer_lowdim_policy."
                                  "DiffusionTransformerLowdimPolicy",
                      "model": model, "obs_dim": "${obs_dim}", "action_dim": "${action_dim}",
                      "obs_as_cond": "${obs_as_cond}", "pred_action_steps_only": False,
                      **common}
    else:
        top["shape_meta"] = {
            "obs": {k: {"shape": list(v.shape), "type": v.type}
                    for k, v in c.shape_meta.obs.items()},
            "action": {"shape": list(c.shape_meta.action_shape)}}
        policy_cfg = {"_target_": "diffusion_policy.policy."
                                  "diffusion_transformer_hybrid_image_policy."
                                  "DiffusionTransformerHybridImagePolicy",
                      "shape_meta": "${shape_meta}",
                      "crop_shape": list(c.obs_encoder.crop_shape), "obs_encoder_group_norm":
                      c.obs_encoder.use_group_norm, "eval_fixed_crop": True,
                      "n_layer": t.n_layer, "n_cond_layers": t.n_cond_layers,
                      "n_head": t.n_head, "n_emb": t.n_emb, "p_drop_emb": t.p_drop_emb,
                      "p_drop_attn": t.p_drop_attn, "causal_attn": t.causal_attn,
                      "time_as_cond": t.time_as_cond, "obs_as_cond": True, **common}
    top["policy"] = policy_cfg
    return OmegaConf.create(top)


def save_dp_checkpoint(policy: DiffusionPolicy, path: str | Path, use_ema: bool = True) -> Path:
    """Write ``policy`` as diffusion_policy's BaseWorkspace.save_checkpoint does (torch + dill)."""
    import dill

    sd = policy.state_dict()
    payload = {
        "cfg": dp_cfg(policy, use_ema),
        "state_dicts": {"model": sd, "ema_model": sd,
                        "optimizer": {"state": {}, "param_groups": []}},
        "pickles": {"_output_dir": dill.dumps("outputs/test")},
    }
    path = Path(path)
    torch.save(payload, path.open("wb"), pickle_module=dill)
    return path


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
