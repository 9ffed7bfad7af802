"""Typed configuration for the policy engine: the only source of defaults.

Mirrors diffusion_policy's hydra configs (``policy.model`` / ``noise_scheduler`` /
``shape_meta``) as plain dataclasses, validated once in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1. Got {value!r}.")


@dataclass
class TransformerConfig:
    """TransformerForDiffusion hyper-parameters (same names as diffusion_policy)."""

    input_dim: int
    output_dim: int
    horizon: int
    n_obs_steps: int | None = None
    cond_dim: int = 0
    n_layer: int = 8
    n_head: int = 4
    n_emb: int = 256
    p_drop_emb: float = 0.0
    p_drop_attn: float = 0.3
    causal_attn: bool = True
    time_as_cond: bool = True
    obs_as_cond: bool = True
    n_cond_layers: int = 0

    def __post_init__(self) -> None:
        for name in ("input_dim", "output_dim", "horizon", "n_layer", "n_head", "n_emb"):
            _check_positive(name, getattr(self, name))
        if self.n_emb % self.n_head:
            raise ValueError(
                f"`n_emb` ({self.n_emb}) must be divisible by `n_head` ({self.n_head})."
            )
        if self.n_obs_steps is None:
            self.n_obs_steps = self.horizon
        # diffusion_policy derives obs_as_cond from cond_dim; keep them consistent.
        self.obs_as_cond = self.cond_dim > 0
        if self.obs_as_cond and not self.time_as_cond:
            raise ValueError("`obs_as_cond` requires `time_as_cond=True` (as in diffusion_policy).")
        if self.n_cond_layers < 0:
            raise ValueError(f"`n_cond_layers` must be >= 0. Got {self.n_cond_layers}.")

    @property
    def n_cond_tokens(self) -> int:
        """T_cond: number of memory tokens (0 means encoder-only mode)."""
        t_cond = 1 if self.time_as_cond else 0
        if self.obs_as_cond:
            t_cond += self.n_obs_steps
        return t_cond

    @property
    def n_tokens(self) -> int:
        """T: number of sample tokens (+1 time token when time is not a condition)."""
        return self.horizon + (0 if self.time_as_cond else 1)

    @property
    def encoder_only(self) -> bool:
        return self.n_cond_tokens == 0


@dataclass
class NoiseSchedulerConfig:
    """Noise scheduler settings (diffusers names, diffusion_policy defaults for DP-T)."""

    type: str = "ddpm"  # "ddpm" | "ddim"
    num_train_timesteps: int = 100
    num_inference_steps: int = 100
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "squaredcos_cap_v2"
    variance_type: str = "fixed_small"
    clip_sample: bool = True
    prediction_type: str = "epsilon"
    set_alpha_to_one: bool = True
    steps_offset: int = 0

    def __post_init__(self) -> None:
        if self.type not in ("ddpm", "ddim"):
            raise ValueError(f"`type` must be 'ddpm' or 'ddim'. Got {self.type!r}.")
        if self.beta_schedule not in _BETA_SCHEDULES:
            raise ValueError(
                f"`beta_schedule` must be one of {_BETA_SCHEDULES}. Got {self.beta_schedule!r}."
            )
        if self.prediction_type not in _PREDICTION_TYPES:
            raise ValueError(
                f"`prediction_type` must be one of {_PREDICTION_TYPES}. "
                f"Got {self.prediction_type!r}."
            )
        _check_positive("num_train_timesteps", self.num_train_timesteps)
        _check_positive("num_inference_steps", self.num_inference_steps)
        if self.num_inference_steps > self.num_train_timesteps:
            raise ValueError(
                f"`num_inference_steps` ({self.num_inference_steps}) cannot exceed "
                f"`num_train_timesteps` ({self.num_train_timesteps})."
            )


@dataclass
class ObsSpec:
    """One observation key: its shape (channels-first for rgb) and type."""

    shape: tuple[int, ...]
    type: str = "low_dim"  # "rgb" | "low_dim"

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        if self.type not in ("rgb", "low_dim"):
            raise ValueError(f"obs `type` must be 'rgb' or 'low_dim'. Got {self.type!r}.")
        if self.type == "rgb" and len(self.shape) != 3:
            raise ValueError(f"rgb obs shape must be (C, H, W). Got {self.shape}.")
        if any(s < 1 for s in self.shape):
            raise ValueError(f"obs shape entries must be >= 1. Got {self.shape}.")


@dataclass
class ShapeMeta:
    """Observation keys in declared order, and the action shape."""

    obs: dict[str, ObsSpec]
    action_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        self.obs = {
            k: v if isinstance(v, ObsSpec) else ObsSpec(**v) for k, v in self.obs.items()
        }
        self.action_shape = tuple(int(s) for s in self.action_shape)
        if not self.obs:
            raise ValueError("shape_meta.obs must declare at least one observation key.")
        if len(self.action_shape) != 1:
            raise ValueError(f"action shape must be (action_dim,). Got {self.action_shape}.")

    @property
    def rgb_keys(self) -> list[str]:
        return [k for k, v in self.obs.items() if v.type == "rgb"]

    @property
    def low_dim_keys(self) -> list[str]:
        return [k for k, v in self.obs.items() if v.type == "low_dim"]

    @property
    def action_dim(self) -> int:
        return self.action_shape[0]


@dataclass
class ObsEncoderConfig:
    """robomimic-style image encoder settings (diffusion_policy's hybrid image policy)."""

    crop_shape: tuple[int, int] | None = (84, 84)
    use_group_norm: bool = True
    num_keypoints: int = 32  # spatial softmax keypoints
    feature_dim: int = 64  # linear projection after the spatial softmax
    share_rgb_model: bool = False
    # "resnet18": robomimic's trunk (diffusion_policy's image policies, 11 M parameters);
    # "conv": a few 3x3 conv + GroupNorm + ReLU layers (first two stride 2), small enough to
    # train and run on a CPU.
    backbone: str = "resnet18"
    conv_channels: tuple[int, ...] = (32, 32, 32)  # "conv" backbone only
    # robomimic applies ReLU to every image feature; "none" keeps them signed (a feature
    # trained to regress object keypoints, for instance).
    feature_activation: str = "relu"

    def __post_init__(self) -> None:
        if self.crop_shape is not None:
            self.crop_shape = tuple(int(s) for s in self.crop_shape)
        _check_positive("num_keypoints", self.num_keypoints)
        _check_positive("feature_dim", self.feature_dim)
        if self.backbone not in ("resnet18", "conv"):
            raise ValueError(f"obs_encoder.backbone must be 'resnet18' or 'conv'. "
                             f"Got {self.backbone!r}.")
        if self.feature_activation not in ("relu", "none"):
            raise ValueError(f"obs_encoder.feature_activation must be 'relu' or 'none'. "
                             f"Got {self.feature_activation!r}.")
        self.conv_channels = tuple(self.conv_channels)
        if not self.conv_channels:
            raise ValueError("obs_encoder.conv_channels needs at least one layer.")
        for c in self.conv_channels:
            _check_positive("conv_channels[i]", c)


@dataclass
class PolicyConfig:
    """Everything needed to rebuild a policy from weights (saved inside our checkpoints)."""

    shape_meta: ShapeMeta
    transformer: TransformerConfig
    scheduler: NoiseSchedulerConfig = field(default_factory=NoiseSchedulerConfig)
    obs_encoder: ObsEncoderConfig | None = None
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    # Names the node uses to map ROS messages; optional for pure-Python use.
    action_names: list[str] = field(default_factory=list)
    obs_low_dim_names: dict[str, list[str]] = field(default_factory=dict)
    control_period_s: float = 0.1
    name: str = "dp_transformer"

    def __post_init__(self) -> None:
        if isinstance(self.shape_meta, dict):
            self.shape_meta = ShapeMeta(**self.shape_meta)
        if isinstance(self.transformer, dict):
            self.transformer = TransformerConfig(**self.transformer)
        if isinstance(self.scheduler, dict):
            self.scheduler = NoiseSchedulerConfig(**self.scheduler)
        if isinstance(self.obs_encoder, dict):
            self.obs_encoder = ObsEncoderConfig(**self.obs_encoder)
        for name in ("horizon", "n_obs_steps", "n_action_steps"):
            _check_positive(name, getattr(self, name))
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ValueError(
                f"`n_obs_steps - 1 + n_action_steps` ({self.n_obs_steps - 1 + self.n_action_steps})"
                f" must be <= `horizon` ({self.horizon}): the executed slice must fit."
            )
        if self.transformer.horizon != self.horizon:
            raise ValueError(
                f"transformer.horizon ({self.transformer.horizon}) != horizon ({self.horizon})."
            )
        if self.shape_meta.rgb_keys and self.obs_encoder is None:
            self.obs_encoder = ObsEncoderConfig()
        crop = self.obs_encoder.crop_shape if self.obs_encoder is not None else None
        for key in self.shape_meta.rgb_keys if crop else ():
            hw = self.shape_meta.obs[key].shape[1:]
            if crop[0] > hw[0] or crop[1] > hw[1]:
                raise ValueError(f"obs_encoder.crop_shape {crop} is larger than rgb key {key!r}"
                                 f" (H, W) = {hw}; use a crop within the image.")
        if self.action_names and len(self.action_names) != self.shape_meta.action_dim:
            raise ValueError(
                f"`action_names` has {len(self.action_names)} names but the action dim is "
                f"{self.shape_meta.action_dim}."
            )
        for key, names in self.obs_low_dim_names.items():
            spec = self.shape_meta.obs.get(key)
            if spec is None or spec.type != "low_dim" or len(names) != spec.shape[0]:
                raise ValueError(
                    f"`obs_low_dim_names[{key!r}]` must name every entry of a low_dim key; "
                    f"got {len(names)} names for {spec}."
                )
        all_names = [n for names in self.obs_low_dim_names.values() for n in names]
        dups = sorted({n for n in all_names if all_names.count(n) > 1})
        if dups or len(set(self.action_names)) != len(self.action_names):
            raise ValueError(f"duplicate observation or action names {dups or self.action_names}"
                             ": every joint name must map to one value.")
        if not (isinstance(self.control_period_s, (int, float)) and
                0 < self.control_period_s < 3600):  # also refuses NaN and inf
            raise ValueError(f"`control_period_s` must be a finite number of seconds in "
                             f"(0, 3600). Got {self.control_period_s}.")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape_meta"] = {
            "obs": {k: {"shape": list(v.shape), "type": v.type}
                    for k, v in self.shape_meta.obs.items()},
            "action_shape": list(self.shape_meta.action_shape),
        }
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown policy config fields {sorted(unknown)}.")
        return cls(**d)
