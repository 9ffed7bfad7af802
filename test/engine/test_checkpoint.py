"""Checkpoints: diffusion_policy .ckpt import, our safetensors format, errors."""

import warnings

import numpy as np
import pytest
import torch

from bac_ros.engine.checkpoint import (
    CheckpointError,
    UnsupportedArchitectureError,
    load_policy,
    save_policy,
)
from bac_ros.engine.testing import (
    lowdim_dp_policy,
    make_tiny_policy,
    random_obs,
    save_dp_checkpoint,
)

warnings.filterwarnings("ignore", message="loading .* with full pickle")


def _same_actions(p, q):
    obs = random_obs(p)
    a = p.predict(obs, generator=torch.Generator().manual_seed(5))
    b = q.predict(obs, generator=torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(a.action_pred, b.action_pred)


@pytest.mark.parametrize("make", [lambda: lowdim_dp_policy(num_inference_steps=5),
                                  lambda: make_tiny_policy("image", num_inference_steps=3)])
def test_dp_ckpt_roundtrip(tmp_path, make):
    """A diffusion_policy-format .ckpt loads with the same names, shapes and actions."""
    p = make()
    path = save_dp_checkpoint(p, tmp_path / "policy.ckpt")
    q = load_policy(path)  # restricted unpickler: no allow_pickle needed for a plain ckpt
    assert set(q.state_dict()) == set(p.state_dict())
    for k, v in p.state_dict().items():
        assert q.state_dict()[k].shape == v.shape, k
    assert q.config.shape_meta.obs.keys() == p.config.shape_meta.obs.keys()
    assert q.config.transformer.cond_dim == p.config.transformer.cond_dim  # via ${eval:...}
    assert load_policy(path, allow_pickle=True).fingerprint == q.fingerprint
    _same_actions(p, q)
    # converter round trip: ours keeps the actions and the fingerprint
    out = save_policy(q, tmp_path / "policy.safetensors")
    r = load_policy(out)
    assert r.fingerprint == q.fingerprint
    _same_actions(q, r)


def test_fp16_export_loads(tmp_path):
    """fp16 files load into float32 modules with near-identical actions."""
    p = make_tiny_policy("lowdim", num_inference_steps=5)
    q = load_policy(save_policy(p, tmp_path / "p.safetensors", fp16=True))
    assert q.model.head.weight.dtype == torch.float32
    obs = random_obs(p)
    a = p.predict(obs, generator=torch.Generator().manual_seed(0)).action
    b = q.predict(obs, generator=torch.Generator().manual_seed(0)).action
    assert np.abs(a - b).max() < 5.0  # pixels; fp16 weight rounding only


def test_unet_checkpoint_is_rejected(tmp_path):
    """A DP-C (UNet) checkpoint gives an unsupported-architecture error."""
    p = lowdim_dp_policy(num_inference_steps=5)
    path = save_dp_checkpoint(p, tmp_path / "unet.ckpt")
    payload = torch.load(path, weights_only=False)
    payload["cfg"].policy._target_ = ("diffusion_policy.policy.diffusion_unet_lowdim_policy."
                                      "DiffusionUnetLowdimPolicy")
    torch.save(payload, path)
    with pytest.raises(UnsupportedArchitectureError, match="UNet"):
        load_policy(path)


def test_pred_action_steps_only_is_rejected(tmp_path):
    """A DP-T trained with pred_action_steps_only is refused with the option named."""
    path = save_dp_checkpoint(lowdim_dp_policy(num_inference_steps=5), tmp_path / "p.ckpt")
    payload = torch.load(path, weights_only=False)
    payload["cfg"].policy.pred_action_steps_only = True
    torch.save(payload, path)
    with pytest.raises(UnsupportedArchitectureError, match="pred_action_steps_only"):
        load_policy(path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_code_in_pickle_needs_opt_in(tmp_path):
    """A global outside the allow-list is refused before it runs, naming allow_pickle."""
    path = save_dp_checkpoint(lowdim_dp_policy(num_inference_steps=5), tmp_path / "p.ckpt")
    payload = torch.load(path, weights_only=False)
    marker = tmp_path / "pwned"
    payload["pickles"]["evil"] = _Evil(marker)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="io.open.*allow_pickle"):
        load_policy(path)
    assert not marker.exists()


def test_ema_weights_preferred(tmp_path):
    """cfg.training.use_ema selects ema_model; otherwise the raw model weights load."""
    p = lowdim_dp_policy(seed=0, num_inference_steps=5)
    raw = lowdim_dp_policy(seed=1, num_inference_steps=5)
    ema = load_policy(save_dp_checkpoint(p, tmp_path / "e.ckpt", use_ema=True,
                                         model_state=raw.state_dict()))
    assert ema.fingerprint == p.fingerprint
    plain = load_policy(save_dp_checkpoint(p, tmp_path / "m.ckpt", use_ema=False,
                                           model_state=raw.state_dict()))
    assert plain.fingerprint == raw.fingerprint != p.fingerprint


def test_truncated_and_missing_files(tmp_path):
    """Truncated files and missing paths raise CheckpointError with a reason."""
    p = make_tiny_policy("lowdim")
    good = save_policy(p, tmp_path / "p.safetensors")
    data = good.read_bytes()
    bad = tmp_path / "trunc.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_policy(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "nope.safetensors")
    ck = save_dp_checkpoint(lowdim_dp_policy(), tmp_path / "p.ckpt")
    (tmp_path / "t.ckpt").write_bytes(ck.read_bytes()[:2000])
    with pytest.raises(CheckpointError):
        load_policy(tmp_path / "t.ckpt", allow_pickle=True)


def test_missing_key_and_shape_mismatch(tmp_path):
    """Weights that do not fit the config are named in the error."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    p = make_tiny_policy("lowdim")
    path = save_policy(p, tmp_path / "p.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    w = load_file(str(path))
    w.pop("model.head.weight")
    save_file(w, str(tmp_path / "m.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="missing.*head.weight"):
        load_policy(tmp_path / "m.safetensors")
    w = load_file(str(path))
    w["model.head.bias"] = torch.zeros(5)
    save_file(w, str(tmp_path / "s.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="shape mismatch.*head.bias"):
        load_policy(tmp_path / "s.safetensors")


def test_missing_cfg_keys_take_reference_defaults(tmp_path):
    """cfg keys left out fall back to diffusion_policy's constructor defaults."""
    from bac_ros.engine.checkpoint import config_from_dp_cfg
    from bac_ros.engine.testing import dp_cfg

    cfg = dp_cfg(make_tiny_policy("image", num_inference_steps=2, image_hw=96))
    for key in ("crop_shape", "obs_encoder_group_norm", "causal_attn", "n_head"):
        del cfg.policy[key]
    with pytest.warns(UserWarning, match="eval_fixed_crop"):
        cfg.policy.eval_fixed_crop = False
        config, use_ema = config_from_dp_cfg(cfg)
    assert config.obs_encoder.crop_shape == (76, 76)
    assert config.obs_encoder.use_group_norm is False
    assert config.transformer.causal_attn is True and config.transformer.n_head == 4
    low = dp_cfg(lowdim_dp_policy(num_inference_steps=2))
    del low.policy.model.causal_attn
    assert config_from_dp_cfg(low)[0].transformer.causal_attn is False
    cfg.policy.crop_shape = [100, 100]  # larger than the 96 px image
    with pytest.raises(ValueError, match="crop_shape.*image"), pytest.warns(UserWarning):
        config_from_dp_cfg(cfg)


def test_missing_normalizer_field_is_an_error(tmp_path):
    """A checkpoint without a normalizer for an observation key is refused, naming it."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = save_policy(make_tiny_policy("lowdim"), tmp_path / "p.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    w = {k: v for k, v in load_file(str(path)).items()
         if not k.startswith("normalizer.params_dict.agent_pos.")}
    save_file(w, str(tmp_path / "n.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="no normalizer for \\['agent_pos'\\]"):
        load_policy(tmp_path / "n.safetensors")


def test_fingerprint_tracks_weights_not_names(tmp_path):
    """Fingerprint: 16 hex chars; a changed weight changes it, names / period do not."""
    import dataclasses

    from bac_ros.engine.checkpoint import fingerprint_policy

    p = make_tiny_policy("lowdim", num_inference_steps=3)
    fp = fingerprint_policy(p)
    assert len(fp) == 16 and int(fp, 16) >= 0
    p.config = dataclasses.replace(p.config, name="renamed", control_period_s=0.05)
    assert fingerprint_policy(p) == fp
    with torch.no_grad():
        p.model.decoder.layers[1].linear2.bias[0] += 1e-3
    assert fingerprint_policy(p) != fp
    # a directory holding exactly one .safetensors loads as that file
    d = tmp_path / "policy_dir"
    d.mkdir()
    save_policy(p, d / "model.safetensors")
    assert load_policy(d).fingerprint == fingerprint_policy(p)


def test_scheduler_from_cfg_defaults_and_unsupported():
    """Scheduler keys left out take diffusers' defaults; DDIM round-trips; others refused."""
    from bac_ros.engine.checkpoint import config_from_dp_cfg
    from bac_ros.engine.testing import dp_cfg

    p = lowdim_dp_policy(num_inference_steps=4)
    p.set_scheduler("ddim", 4)
    cfg = dp_cfg(p)
    config = config_from_dp_cfg(cfg)[0]
    assert config.scheduler == p.config.scheduler
    del cfg.policy.noise_scheduler.beta_schedule, cfg.policy.noise_scheduler.num_train_timesteps
    config = config_from_dp_cfg(cfg)[0]
    assert config.scheduler.beta_schedule == "linear"
    assert config.scheduler.num_train_timesteps == 1000
    cfg.policy.noise_scheduler._target_ = "diffusers.DPMSolverMultistepScheduler"
    with pytest.raises(UnsupportedArchitectureError, match="DPMSolverMultistepScheduler"):
        config_from_dp_cfg(cfg)
