"""Export in diffusion_policy's checkpoint format (what its workspaces save and load).

``save_dp_checkpoint`` writes ``{cfg, state_dicts: {model, ema_model, optimizer}, pickles}``
with torch + dill, the cfg shaped like diffusion_policy's hydra configs (incl. ``${eval:}``),
so a policy trained with bac_ros can be loaded by diffusion_policy's own tools.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bac_ros.engine.policy import DiffusionPolicy


def dp_cfg(policy: DiffusionPolicy, use_ema: bool = True):
    """An OmegaConf cfg shaped like diffusion_policy's workspace configs (with ${eval:})."""
    from omegaconf import OmegaConf

    c, t, s = policy.config, policy.config.transformer, policy.config.scheduler
    scheduler = {"num_train_timesteps": s.num_train_timesteps, "beta_start": s.beta_start,
                 "beta_end": s.beta_end, "beta_schedule": s.beta_schedule,
                 "clip_sample": s.clip_sample, "prediction_type": s.prediction_type}
    if s.type == "ddim":
        scheduler.update(_target_="diffusers.schedulers.scheduling_ddim.DDIMScheduler",
                         set_alpha_to_one=s.set_alpha_to_one, steps_offset=s.steps_offset)
    else:
        scheduler.update(_target_="diffusers.schedulers.scheduling_ddpm.DDPMScheduler",
                         variance_type=s.variance_type)
    common = {"horizon": "${horizon}", "n_action_steps": "${n_action_steps}",
              "n_obs_steps": "${n_obs_steps}", "num_inference_steps": s.num_inference_steps,
              "noise_scheduler": scheduler}
    top = {"horizon": c.horizon, "n_obs_steps": c.n_obs_steps,
           "n_action_steps": c.n_action_steps, "obs_as_cond": True,
           "training": {"use_ema": use_ema, "seed": 42}, "name": "train_test",
           "task_name": "${task.name}", "task": {"name": c.name},
           # hydra-only interpolations as real workspaces save them (loaders must not need them)
           "logging": {"name": "${now:%Y.%m.%d-%H.%M.%S}_${name}_${task_name}"},
           "ema": {"_target_": "diffusion_policy.model.diffusion.ema_model.EMAModel",
                   "power": 0.75, "max_value": 0.9999}}
    if list(c.shape_meta.obs) == ["obs"]:  # diffusion_policy's lowdim layout
        obs_dim = c.shape_meta.obs["obs"].shape[0]
        top.update(obs_dim=obs_dim, action_dim=c.shape_meta.action_dim)
        model = {"_target_": "diffusion_policy.model.diffusion.transformer_for_diffusion."
                             "TransformerForDiffusion",
                 "input_dim": "${eval:'${action_dim} if ${obs_as_cond} else ${obs_dim} + "
                              "${action_dim}'}",
                 "output_dim": "${policy.model.input_dim}", "horizon": "${horizon}",
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
                      "crop_shape": list(c.obs_encoder.crop_shape)
                      if c.obs_encoder and c.obs_encoder.crop_shape else None,
                      "obs_encoder_group_norm": bool(c.obs_encoder and
                                                     c.obs_encoder.use_group_norm),
                      "eval_fixed_crop": True,
                      "n_layer": t.n_layer, "n_cond_layers": t.n_cond_layers,
                      "n_head": t.n_head, "n_emb": t.n_emb, "p_drop_emb": t.p_drop_emb,
                      "p_drop_attn": t.p_drop_attn, "causal_attn": t.causal_attn,
                      "time_as_cond": t.time_as_cond, "obs_as_cond": True, **common}
    top["policy"] = policy_cfg
    return OmegaConf.create(top)


def save_dp_checkpoint(policy: DiffusionPolicy, path: str | Path, use_ema: bool = True,
                       model_state: dict | None = None, optimizer_state: dict | None = None
                       ) -> Path:
    """Write ``policy`` as diffusion_policy's BaseWorkspace.save_checkpoint does (torch + dill).

    ``policy`` holds the weights saved as ``ema_model``; ``model_state`` (the raw, non-EMA
    weights) defaults to the same.
    """
    import dill

    # Empty parameters diffusion_policy's ModuleAttrMixin registers on the policy and its
    # mask generator; its workspace loads with strict=True, so they must be present.
    empty = {"_dummy_variable": torch.empty(0), "mask_generator._dummy_variable": torch.empty(0)}
    sd = {**empty, **policy.state_dict()}
    if model_state is not None:
        model_state = {**empty, **model_state}
    payload = {
        "cfg": dp_cfg(policy, use_ema),
        "state_dicts": {"model": model_state or sd, "ema_model": sd,
                        "optimizer": optimizer_state or {"state": {}, "param_groups": []}},
        "pickles": {"_output_dir": dill.dumps("outputs/test")},
    }
    path = Path(path)
    torch.save(payload, path.open("wb"), pickle_module=dill)
    return path
