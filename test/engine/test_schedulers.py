"""Noise schedulers: diffusion_policy's diffusers settings pass through unchanged."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from bac_ros.engine.config import NoiseSchedulerConfig
from bac_ros.engine.schedulers import build_scheduler


def test_ddpm_matches_reference_settings():
    """DDPM from the DP-T workspace config equals diffusers' scheduler built directly."""
    ours = build_scheduler(NoiseSchedulerConfig())
    ref = DDPMScheduler(num_train_timesteps=100, beta_start=0.0001, beta_end=0.02,
                        beta_schedule="squaredcos_cap_v2", variance_type="fixed_small",
                        clip_sample=True, prediction_type="epsilon")
    ref.set_timesteps(100)
    assert isinstance(ours, DDPMScheduler)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod)
    assert torch.equal(ours.timesteps, ref.timesteps)
    x, eps = torch.randn(2, 16, 2), torch.randn(2, 16, 2)
    a = ours.step(eps, 50, x, generator=torch.Generator().manual_seed(0)).prev_sample
    b = ref.step(eps, 50, x, generator=torch.Generator().manual_seed(0)).prev_sample
    assert torch.equal(a, b)


@pytest.mark.parametrize("k", [1, 10, 16])
def test_ddim_any_k_and_alpha_settings(k):
    """DDIM honours set_alpha_to_one / steps_offset and any step count."""
    cfg = NoiseSchedulerConfig(type="ddim", num_inference_steps=k, set_alpha_to_one=False,
                               steps_offset=1, prediction_type="sample")
    s = build_scheduler(cfg)
    assert isinstance(s, DDIMScheduler) and len(s.timesteps) == k
    assert s.config.set_alpha_to_one is False and s.config.steps_offset == 1
    assert s.config.prediction_type == "sample"
    torch.testing.assert_close(s.final_alpha_cumprod, s.alphas_cumprod[0])


@pytest.mark.parametrize("field, value", [("type", "unet"), ("beta_schedule", "cosine"),
                                          ("prediction_type", "x0"), ("num_inference_steps", 0),
                                          ("num_inference_steps", 101)])
def test_bad_scheduler_config_names_field(field, value):
    """Invalid settings raise ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        NoiseSchedulerConfig(**{field: value})


@pytest.mark.parametrize("variance_type, clip, prediction, k", [
    ("fixed_small", True, "epsilon", 100), ("fixed_small_log", False, "epsilon", 100),
    ("fixed_large", True, "sample", 20), ("fixed_large", False, "v_prediction", 7)])
def test_fast_ddpm_step_is_bit_identical_to_diffusers(variance_type, clip, prediction, k):
    """FastDDPMStep (constants precomputed once) reproduces diffusers' DDPM step exactly, noise
    included, for every step of the chunk; unsupported settings are left to diffusers."""
    from bac_ros.engine.schedulers import FastDDPMStep

    s = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2",
                      variance_type=variance_type, clip_sample=clip, prediction_type=prediction)
    s.set_timesteps(k)
    fast = FastDDPMStep(s)
    x = torch.randn(3, 16, 2) * 2
    ga, gb = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = b = x
    for i, t in enumerate(s.timesteps):
        eps = torch.randn(3, 16, 2, generator=torch.Generator().manual_seed(i))
        a = s.step(eps, t, a, generator=ga).prev_sample
        b = fast(i, eps, b, generator=gb)
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True,
                                   msg=f"step {i} (t={int(t)})")
    assert fast.matches(s)
    s.set_timesteps(k - 1)
    assert not fast.matches(s)
    assert not FastDDPMStep.supports(DDPMScheduler(variance_type="learned_range"))
    assert not FastDDPMStep.supports(DDPMScheduler(thresholding=True))
    assert not FastDDPMStep.supports(DDIMScheduler())
