"""LinearNormalizer with diffusion_policy's semantics and state-dict layout.

Per field: ``y = x * scale + offset``; keys ``params_dict.<field>.scale|offset``
and ``params_dict.<field>.input_stats.min|max|mean|std``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn as nn


def _params(scale, offset, stats: Mapping[str, torch.Tensor]) -> nn.ParameterDict:
    return nn.ParameterDict({
        "scale": nn.Parameter(scale.float(), requires_grad=False),
        "offset": nn.Parameter(offset.float(), requires_grad=False),
        "input_stats": nn.ParameterDict({
            k: nn.Parameter(v.float(), requires_grad=False) for k, v in stats.items()
        }),
    })


def field_stats(data: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
    """min/max/mean/std over all but the last axis."""
    x = torch.as_tensor(np.asarray(data), dtype=torch.float32).reshape(-1, np.shape(data)[-1])
    return {"min": x.min(0).values, "max": x.max(0).values, "mean": x.mean(0), "std": x.std(0)}


def limits_params(stats, output_min=-1.0, output_max=1.0, range_eps=1e-4) -> nn.ParameterDict:
    """Map [min, max] to [output_min, output_max]; near-constant dims are centred."""
    input_range = stats["max"] - stats["min"]
    ignore = input_range < range_eps
    input_range = torch.where(ignore, torch.full_like(input_range, output_max - output_min),
                              input_range)
    scale = (output_max - output_min) / input_range
    offset = output_min - scale * stats["min"]
    offset = torch.where(ignore, (output_max + output_min) / 2 - stats["min"], offset)
    return _params(scale, offset, stats)


def gaussian_params(stats, range_eps=1e-4) -> nn.ParameterDict:
    std = torch.where(stats["std"] < range_eps, torch.ones_like(stats["std"]), stats["std"])
    scale = 1.0 / std
    return _params(scale, -stats["mean"] * scale, stats)


def image_range_params() -> nn.ParameterDict:
    """[0, 1] images -> [-1, 1] (diffusion_policy's get_image_range_normalizer)."""
    one = torch.ones(1)
    stats = {"min": 0 * one, "max": one, "mean": 0.5 * one, "std": one * np.sqrt(1 / 12)}
    return _params(2 * one, -one, stats)


class LinearNormalizer(nn.Module):
    def __init__(self):
        super().__init__()
        self.params_dict = nn.ParameterDict()

    def set_field(self, key: str, params: nn.ParameterDict) -> None:
        self.params_dict[key] = params

    def fit_field(self, key: str, data, mode: str = "limits") -> None:
        if mode not in ("limits", "gaussian"):
            raise ValueError(f"normalizer mode must be 'limits' or 'gaussian'. Got {mode!r}.")
        stats = field_stats(data)
        self.set_field(key, limits_params(stats) if mode == "limits" else gaussian_params(stats))

    def keys(self) -> list[str]:
        return list(self.params_dict.keys())

    def __contains__(self, key: str) -> bool:
        return key in self.params_dict

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        p = self._field(key)
        scale, offset = p["scale"], p["offset"]
        # diffusion_policy applies params over consecutive groups of scale.numel() values
        # (reshape(-1, n)); same here, so per-channel image scales behave identically.
        return (x.reshape(-1, scale.numel()) * scale + offset).reshape(x.shape)

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        p = self._field(key)
        scale, offset = p["scale"], p["offset"]
        return ((x.reshape(-1, scale.numel()) - offset) / scale).reshape(x.shape)

    def _field(self, key: str) -> nn.ParameterDict:
        if key not in self.params_dict:
            raise KeyError(
                f"normalizer has no field {key!r}; it has {self.keys()}. The checkpoint's "
                "normalizer must cover every observation key and 'action'."
            )
        return self.params_dict[key]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Fields are created from the state dict itself (as diffusion_policy's
        # DictOfTensorMixin does), so an empty normalizer can load any checkpoint.
        root = prefix + "params_dict."
        fields: dict[str, dict] = {}
        for key, value in state_dict.items():
            if key.startswith(root):
                parts = key[len(root):].split(".")
                node = fields
                for p in parts[:-1]:
                    node = node.setdefault(p, {})
                node[parts[-1]] = value
        for name, d in fields.items():
            if name not in self.params_dict:
                stats = d.get("input_stats", {})
                self.set_field(name, _params(d["scale"], d["offset"], stats))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
