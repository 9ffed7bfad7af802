"""Observation encoders: robomimic key names, GroupNorm, multi-camera order, eval crop."""

import torch
import torch.nn as nn

from bac_ros.engine.config import ObsEncoderConfig, ShapeMeta
from bac_ros.engine.encoders import ObservationEncoder, center_crop
from bac_ros.engine.testing import make_tiny_policy


def _two_camera_encoder(group_norm=True):
    meta = ShapeMeta(obs={"cam_front": {"shape": [3, 36, 36], "type": "rgb"},
                          "joint_pos": {"shape": [3], "type": "low_dim"},
                          "cam_wrist": {"shape": [3, 40, 40], "type": "rgb"}},
                     action_shape=[2])
    cfg = ObsEncoderConfig(crop_shape=(32, 32), use_group_norm=group_norm, feature_dim=16)
    return ObservationEncoder(meta, cfg).eval()


def test_robomimic_key_names_and_group_norm():
    """State dict keys are robomimic's VisualCore / ResNet18Conv / SpatialSoftmax keys."""
    sd = make_tiny_policy("image", num_inference_steps=2).state_dict()
    root = "obs_encoder.obs_nets.image."
    for k in ["backbone.nets.0.weight", "nets.0.nets.0.weight", "backbone.nets.4.0.conv1.weight",
              "pool.nets.weight", "pool.nets.bias", "pool.pos_x", "pool.pos_y",
              "pool.temperature", "nets.3.weight", "nets.3.bias"]:
        assert root + k in sd, k
    assert sd[root + "nets.3.weight"].shape == (64, 64)  # 32 keypoints x (x, y) -> 64
    # GroupNorm replaces BatchNorm: weight/bias, no running stats
    assert sd[root + "backbone.nets.1.weight"].shape == (64,)
    assert not any("running_mean" in k for k in sd)
    for k in ["normalizer.params_dict.action.scale", "normalizer.params_dict.image.offset",
              "normalizer.params_dict.agent_pos.input_stats.min"]:
        assert k in sd, k
    enc = _two_camera_encoder(group_norm=False)
    assert isinstance(enc.obs_nets["cam_front"].backbone.nets[1], nn.BatchNorm2d)


def test_multi_camera_features_in_declared_order():
    """Each camera has its own encoder; features concatenate in shape_meta order."""
    enc = _two_camera_encoder()
    assert enc.output_dim == 16 + 3 + 16
    assert enc.obs_nets["cam_front"] is not enc.obs_nets["cam_wrist"]
    g = torch.Generator().manual_seed(0)
    obs = {"cam_front": torch.rand(4, 3, 36, 36, generator=g),
           "joint_pos": torch.randn(4, 3, generator=g),
           "cam_wrist": torch.rand(4, 3, 40, 40, generator=g)}
    with torch.no_grad():
        feats = enc(obs)
        front = torch.relu(enc.obs_nets["cam_front"](center_crop(obs["cam_front"], (32, 32))))
        wrist = torch.relu(enc.obs_nets["cam_wrist"](center_crop(obs["cam_wrist"], (32, 32))))
    assert feats.shape == (4, 35)
    torch.testing.assert_close(feats[:, :16], front)
    torch.testing.assert_close(feats[:, 16:19], obs["joint_pos"])
    torch.testing.assert_close(feats[:, 19:], wrist)


def test_eval_crop_is_centred_and_deterministic():
    """Eval uses the centre crop (same output twice); train uses random crops."""
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    c = center_crop(x, (4, 4))
    assert torch.equal(c, x[..., 1:5, 1:5])
    enc = _two_camera_encoder()
    obs = {"cam_front": torch.rand(2, 3, 36, 36), "joint_pos": torch.zeros(2, 3),
           "cam_wrist": torch.rand(2, 3, 40, 40)}
    with torch.no_grad():
        assert torch.equal(enc(obs), enc(obs))


def test_small_conv_backbone_signed_features_and_validation():
    """backbone="conv": a few stride-2/1 conv + GroupNorm layers, spatial softmax on a 1/4
    resolution map, features kept signed with feature_activation="none"; bad names refused."""
    import pytest

    meta = ShapeMeta(obs={"image": {"shape": [3, 96, 96], "type": "rgb"}}, action_shape=[2])
    cfg = ObsEncoderConfig(crop_shape=None, backbone="conv", conv_channels=(8, 16, 16),
                           num_keypoints=4, feature_dim=6, feature_activation="none")
    enc = ObservationEncoder(meta, cfg).eval()
    core = enc.obs_nets["image"]
    assert core.pool._in_h == 24 and core.pool._in_w == 24
    assert isinstance(core.backbone.nets[1], nn.GroupNorm)
    torch.manual_seed(0)
    with torch.no_grad():
        out = enc({"image": torch.rand(5, 3, 96, 96) * 2 - 1})
    assert out.shape == (5, 6) and (out < 0).any()  # no ReLU on the features
    assert sum(p.numel() for p in enc.parameters()) < 10_000
    with pytest.raises(ValueError, match="backbone"):
        ObsEncoderConfig(backbone="vit")
    with pytest.raises(ValueError, match="feature_activation"):
        ObsEncoderConfig(feature_activation="gelu")
    with pytest.raises(ValueError, match="conv_channels"):
        ObsEncoderConfig(conv_channels=(8, 0))
