"""Noise schedulers: diffusers' DDPM / DDIM, the ones diffusion_policy itself uses.

We reuse diffusers rather than re-deriving the posterior math: a trained
checkpoint must be sampled exactly as its training code sampled it.
"""

from __future__ import annotations

from diffusers import DDIMScheduler, DDPMScheduler

from bac_ros.engine.config import NoiseSchedulerConfig


def build_scheduler(cfg: NoiseSchedulerConfig) -> DDPMScheduler | DDIMScheduler:
    common = dict(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule,
        clip_sample=cfg.clip_sample,
        prediction_type=cfg.prediction_type,
    )
    if cfg.type == "ddpm":
        sched = DDPMScheduler(variance_type=cfg.variance_type, **common)
    else:
        sched = DDIMScheduler(
            set_alpha_to_one=cfg.set_alpha_to_one, steps_offset=cfg.steps_offset, **common
        )
    sched.set_timesteps(cfg.num_inference_steps)
    return sched
