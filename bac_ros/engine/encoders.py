"""Observation encoders: low-dim concatenation and robomimic-style image encoders.

Module and parameter names follow robomimic's ``ObservationEncoder`` /
``VisualCore`` / ``ResNet18Conv`` / ``SpatialSoftmax`` exactly, because
diffusion_policy's hybrid image policies save them under ``obs_encoder.*``.
We rebuild them here (instead of importing robomimic) to keep the robot's
install small and free of robomimic's heavy dependencies.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from bac_ros.engine.config import ObsEncoderConfig, ShapeMeta


class ResNet18Conv(nn.Module):
    """torchvision resnet18 without avgpool / fc; ``nets.{0..7}`` as robomimic."""

    def __init__(self, use_group_norm: bool):
        super().__init__()
        net = torchvision.models.resnet18(weights=None)  # never downloads
        self.nets = nn.Sequential(*list(net.children())[:-2])
        if use_group_norm:
            _replace_batchnorm(self.nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nets(x)


def _replace_batchnorm(module: nn.Module) -> None:
    # diffusion_policy: BatchNorm2d -> GroupNorm(num_features // 16 groups).
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(child.num_features // 16, child.num_features))
        else:
            _replace_batchnorm(child)


class SpatialSoftmax(nn.Module):
    """Per-keypoint expected (x, y) under a softmax over the feature map."""

    def __init__(self, input_shape: tuple[int, int, int], num_kp: int, temperature: float = 1.0):
        super().__init__()
        c, h, w = input_shape
        self._in_h, self._in_w, self._num_kp = h, w, num_kp
        self.nets = nn.Conv2d(c, num_kp, kernel_size=1)
        self.register_buffer("temperature", torch.ones(1) * temperature)
        pos_x, pos_y = np.meshgrid(np.linspace(-1.0, 1.0, w), np.linspace(-1.0, 1.0, h))
        self.register_buffer("pos_x", torch.from_numpy(pos_x.reshape(1, h * w)).float())
        self.register_buffer("pos_y", torch.from_numpy(pos_y.reshape(1, h * w)).float())

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        feature = self.nets(feature).reshape(-1, self._in_h * self._in_w)  # (B*K, H*W)
        attention = F.softmax(feature / self.temperature, dim=-1)
        expected_x = torch.sum(self.pos_x * attention, dim=1, keepdim=True)
        expected_y = torch.sum(self.pos_y * attention, dim=1, keepdim=True)
        return torch.cat([expected_x, expected_y], 1).view(-1, self._num_kp, 2)  # (B, K, 2)


class SmallConv(nn.Module):
    """A CPU-sized trunk: 3x3 conv + GroupNorm + ReLU per layer, the first two of stride 2.

    Not in robomimic: ResNet18 (11 M parameters) takes ~4 s per training step of batch 64 on a
    2-core CPU; three 32-channel layers (~28 k parameters, ~13 M multiply-adds per 96x96 frame)
    keep a 24x24 feature map, fine enough for the spatial softmax to localise objects to a
    fraction of an input pixel.
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...], use_group_norm: bool):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(channels):
            layers.append(nn.Conv2d(c_in, c, kernel_size=3, stride=2 if i < 2 else 1, padding=1))
            layers.append(nn.GroupNorm(_groups(c), c) if use_group_norm else nn.BatchNorm2d(c))
            layers.append(nn.ReLU())
            c_in = c
        self.nets = nn.Sequential(*layers)
        self.out_channels = c_in
        self.stride = 2 ** min(2, len(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nets(x)


def _groups(channels: int) -> int:
    # diffusion_policy uses num_features // 16 groups; small layers need at least a few.
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class VisualCore(nn.Module):
    """backbone -> spatial softmax -> flatten -> linear (robomimic's VisualCore)."""

    def __init__(self, input_shape: tuple[int, int, int], cfg: ObsEncoderConfig):
        super().__init__()
        if cfg.backbone == "conv":
            self.backbone = SmallConv(input_shape[0], cfg.conv_channels, cfg.use_group_norm)
            stride, channels = self.backbone.stride, self.backbone.out_channels
        else:
            self.backbone = ResNet18Conv(cfg.use_group_norm)
            # robomimic's ResNet18Conv.output_shape: 512 channels, stride 32 (no dummy
            # forward, which BatchNorm would reject for one sample in train mode).
            stride, channels = 32, 512
        feat_shape = (channels, math.ceil(input_shape[1] / stride),
                      math.ceil(input_shape[2] / stride))
        self.pool = SpatialSoftmax(feat_shape, cfg.num_keypoints)
        linear = nn.Linear(cfg.num_keypoints * 2, cfg.feature_dim)
        self.nets = nn.Sequential(self.backbone, self.pool, nn.Flatten(1, -1), linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nets(x)


def center_crop(x: torch.Tensor, crop_hw: tuple[int, int]) -> torch.Tensor:
    h, w = x.shape[-2:]
    ch, cw = crop_hw
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top:top + ch, left:left + cw]


def random_crop(x: torch.Tensor, crop_hw: tuple[int, int], generator=None) -> torch.Tensor:
    """Per-sample random crop (training augmentation, robomimic's CropRandomizer)."""
    n, (h, w), (ch, cw) = x.shape[0], x.shape[-2:], crop_hw
    tops = torch.randint(0, h - ch + 1, (n,), generator=generator)
    lefts = torch.randint(0, w - cw + 1, (n,), generator=generator)
    return torch.stack([x[i, ..., t:t + ch, s:s + cw] for i, (t, s) in
                        enumerate(zip(tops.tolist(), lefts.tolist()))])


class ObservationEncoder(nn.Module):
    """Encodes normalized observations (N, *shape) per key and concatenates features.

    Features are concatenated in ``shape_meta`` declared order: rgb keys through
    their own VisualCore (+ ReLU, as robomimic's feature activation), low-dim keys
    as they are.
    """

    def __init__(self, shape_meta: ShapeMeta, cfg: ObsEncoderConfig | None):
        super().__init__()
        self.shape_meta = shape_meta
        self.cfg = cfg
        self.obs_nets = nn.ModuleDict()
        self.crop_shape = cfg.crop_shape if cfg is not None else None
        shared = None
        for key in shape_meta.rgb_keys:
            c, h, w = shape_meta.obs[key].shape
            in_shape = (c, *self.crop_shape) if self.crop_shape else (c, h, w)
            if cfg.share_rgb_model and shared is not None:
                self.obs_nets[key] = shared
            else:
                shared = self.obs_nets[key] = VisualCore(in_shape, cfg)
        self.output_dim = sum(
            cfg.feature_dim if spec.type == "rgb" else int(np.prod(spec.shape))
            for spec in shape_meta.obs.values()
        )

    def forward(self, nobs: dict[str, torch.Tensor]) -> torch.Tensor:
        feats = []
        for key, spec in self.shape_meta.obs.items():
            x = nobs[key]
            if spec.type == "rgb":
                if self.crop_shape is not None:
                    x = random_crop(x, self.crop_shape) if self.training else \
                        center_crop(x, self.crop_shape)
                x = self.obs_nets[key](x)
                if self.cfg.feature_activation == "relu":
                    x = F.relu(x)
            feats.append(x.reshape(x.shape[0], -1))
        return torch.cat(feats, dim=-1)  # (N, output_dim)
