"""Checkpoint loading and saving, and the model fingerprint BAC schedules are tied to.

Two formats:
- ours: one ``.safetensors`` file, the PolicyConfig as JSON in its metadata
  (``bac_ros_config``); no pickle, loads fast and safely. The node's default.
- diffusion_policy ``.ckpt`` (``torch.save`` payload with ``cfg``, ``state_dicts``,
  ``pickles``), imported WITHOUT the diffusion_policy package. By default it is
  read with torch's restricted ``weights_only`` unpickler (tensors and OmegaConf
  containers only). Files that need full pickle load only with
  ``allow_pickle=True``: unpickling runs arbitrary code, so do it only for files
  you trust.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
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
from bac_ros.engine.policy import DiffusionPolicy
from bac_ros.io_utils import atomic_write_bytes

FORMAT = "bac_ros/policy/1"
CONFIG_KEY = "bac_ros_config"


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message says why and what to do."""


class UnsupportedArchitectureError(CheckpointError):
    pass


# -- fingerprint ------------------------------------------------------------------------------
def fingerprint_policy(policy: DiffusionPolicy) -> str:
    """sha256 of the canonical config JSON + every weight (fp32, sorted keys); 16 hex chars.

    Only what the network and its training schedule define enters: names, control period,
    the sampler type and step count (``set_scheduler``; schedules check those themselves)
    do not, so switching DDPM-100 -> DDIM-10 keeps the fingerprint.
    """
    h = hashlib.sha256()
    cfg = policy.config.to_dict()
    for key in ("name", "action_names", "obs_low_dim_names", "control_period_s"):
        cfg.pop(key)
    cfg["scheduler"].pop("num_inference_steps")
    cfg["scheduler"].pop("type")
    h.update(json.dumps(cfg, sort_keys=True).encode())
    for key, t in sorted(_unique_state_dict(policy).items()):
        h.update(key.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _unique_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict without aliases (robomimic registers the backbone under two names)."""
    seen: set[int] = set()
    out = {}
    for key, t in module.state_dict(keep_vars=True).items():
        if id(t) in seen or t.numel() == 0:
            continue
        seen.add(id(t))
        out[key] = t.detach()
    return out


# -- our format ------------------------------------------------------------------------------
def save_policy(policy: DiffusionPolicy, path: str | Path, fp16: bool = False) -> Path:
    """Write our single-file format atomically. ``fp16`` halves float weights for shipping."""
    from safetensors.torch import save

    tensors = {}
    for key, t in _unique_state_dict(policy).items():
        t = t.to("cpu").contiguous()
        if fp16 and t.is_floating_point():
            t = t.half()
        tensors[key] = t.clone()
    meta = {"format": FORMAT, CONFIG_KEY: json.dumps(policy.config.to_dict())}
    return atomic_write_bytes(path, save(tensors, metadata=meta))


def _load_safetensors(path: Path) -> tuple[PolicyConfig, dict[str, torch.Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        weights = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}); it may be truncated. "
            "Re-create it with `bac convert`."
        ) from exc
    if meta.get("format") != FORMAT or CONFIG_KEY not in meta:
        raise CheckpointError(
            f"{path}: safetensors file without a bac_ros policy config (format "
            f"{meta.get('format')!r}); convert diffusion_policy checkpoints with `bac convert`."
        )
    bad = sorted({str(t.dtype) for t in weights.values() if not t.is_floating_point()})
    if bad:
        raise CheckpointError(f"{path}: weights of dtype {bad}; a policy stores float weights "
                              "(a damaged or foreign file). Re-create it with `bac convert`.")
    try:
        config = json.loads(meta[CONFIG_KEY])
        if not isinstance(config, dict):
            raise TypeError(f"the config is a {type(config).__name__}, not a mapping")
        return PolicyConfig.from_dict(config), weights
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{path}: malformed bac_ros policy config ({type(exc).__name__}: "
                              f"{str(exc)[:300]}). Re-create it with `bac convert`.") from exc


# -- diffusion_policy .ckpt ---------------------------------------------------------------------
def check_archive(path: Path, allow_legacy: bool = False) -> None:
    """Refuse a .ckpt container that could hang or exhaust memory before any pickle runs.

    torch.save has written zip archives of STORED (uncompressed) records since torch 1.6, and
    diffusion_policy checkpoints are such archives. So: a compressed record (a zip bomb: a
    200 KB file declaring gigabytes) or records larger in total than the file are refused, and
    so is the legacy (pre-1.6) format, whose tar variant can hold a FIFO that blocks the
    reader forever and whose storages are allocated at their declared size before being
    read (unless the user vouches for the file: --allow-pickle)."""
    import tarfile
    import zipfile

    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file (a pipe or device would block the "
                              "reader); copy the checkpoint to a file first.")
    size = path.stat().st_size
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: damaged zip archive ({exc}).") from exc
        packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
        if packed:
            raise CheckpointError(f"{path}: compressed records {packed[:3]} (torch.save never "
                                  "compresses; a compressed record can expand to gigabytes). "
                                  "Re-save the checkpoint with torch.save.")
        total = sum(i.file_size for i in infos)
        if total > size:
            raise CheckpointError(f"{path}: its records declare {total} bytes in a "
                                  f"{size}-byte file; the archive is damaged or hostile.")
        return
    if tarfile.is_tarfile(path):  # the legacy tar variant: regular members only, even trusted
        try:
            with tarfile.open(path) as tf:
                odd = [m.name for m in tf.getmembers() if not m.isreg()]
        except (tarfile.TarError, OSError) as exc:
            raise CheckpointError(f"{path}: damaged tar archive ({exc}).") from exc
        if odd:
            raise CheckpointError(f"{path}: tar members {odd[:3]} are not regular files (a FIFO "
                                  "blocks the reader forever); refusing to read it.")
    if not allow_legacy:
        raise CheckpointError(
            f"{path}: not a zip archive (torch >= 1.6 format). The legacy torch format is not "
            "read without --allow-pickle / allow_pickle_checkpoint (it allocates storages at "
            "their declared size and its tar variant can block): re-save it with a current "
            "torch on a machine where you trust it, or convert it with `bac convert`.")


def read_dp_payload(path: Path, allow_pickle: bool) -> dict:
    """Read a diffusion_policy payload; full pickle (arbitrary code) only with allow_pickle.

    Default: ``torch.load`` through :mod:`bac_ros.engine.safe_unpickle`, which builds only
    tensors, containers and OmegaConf objects (diffusion_policy / hydra classes become inert
    stand-ins). ``allow_pickle=True`` falls back to ``torch.load(weights_only=False)`` with
    dill, as diffusion_policy itself loads, when the restricted loader refuses a global.
    """
    from bac_ros.engine.safe_unpickle import restricted_pickle_module

    check_archive(path, allow_legacy=allow_pickle)
    try:
        return torch.load(path, map_location="cpu", weights_only=False,
                          pickle_module=restricted_pickle_module)
    except pickle.UnpicklingError as exc:
        if "restricted loader" not in str(exc):
            raise CheckpointError(f"{path}: cannot read checkpoint ({exc}); the file may be "
                                  "truncated or corrupt.") from exc
        restricted_error = exc
    except Exception as exc:  # noqa: BLE001 - zip/EOF/storage errors of a damaged file
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc});"
                              " the file may be truncated or corrupt.") from exc
    if not allow_pickle:
        raise CheckpointError(
            f"{path}: {restricted_error} Better: convert it once with `bac convert` on a "
            "machine where you trust it."
        ) from restricted_error
    warnings.warn(f"loading {path} with full pickle (allow_pickle=True): only for trusted files",
                  stacklevel=3)
    try:
        import dill  # diffusion_policy saves with pickle_module=dill

        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=dill)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot unpickle checkpoint ({exc}); the file may be "
                              "truncated or corrupt.") from exc


# Constructor defaults of diffusion_policy's classes, for keys a cfg does not set.
_TFD_DEFAULTS = dict(n_obs_steps=None, cond_dim=0, n_layer=12, n_head=12, n_emb=768,
                     p_drop_emb=0.1, p_drop_attn=0.1, causal_attn=False, time_as_cond=True,
                     n_cond_layers=0)
_DIFFUSERS_DEFAULTS = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                           beta_schedule="linear", variance_type="fixed_small", clip_sample=True,
                           prediction_type="epsilon", set_alpha_to_one=True, steps_offset=0)
_HYBRID_DEFAULTS = dict(crop_shape=(76, 76), obs_encoder_group_norm=False,
                        eval_fixed_crop=False, n_layer=8, n_cond_layers=0, n_head=4, n_emb=256,
                        p_drop_emb=0.0, p_drop_attn=0.3, causal_attn=True, time_as_cond=True)


def config_from_dp_cfg(cfg) -> tuple[PolicyConfig, bool]:
    """PolicyConfig from a diffusion_policy hydra cfg; returns (config, use_ema)."""
    from bac_ros.engine.dp_config import ConfigError, Resolver, to_plain

    # Plain data only: no OmegaConf object is built and no OmegaConf resolver runs (cfgs come
    # from files we do not trust). Resolve only what we read: the rest of a real cfg holds
    # hydra-only interpolations (``${now:...}`` in logging) that stay literal text.
    try:
        tree = to_plain(cfg)
        if not isinstance(tree, dict) or not isinstance(tree.get("policy"), dict):
            raise CheckpointError("the checkpoint's cfg has no 'policy' section; is it a "
                                  "diffusion_policy workspace checkpoint?")
        res = Resolver(tree)
        pol = res.value(tree["policy"])
        training = tree.get("training")
        use_ema = res.value(training.get("use_ema", False)) if isinstance(training, dict) \
            else False
        if not isinstance(use_ema, bool):
            raise CheckpointError(f"cfg.training.use_ema must be true or false. Got "
                                  f"{str(use_ema)[:80]!r}.")
    except CheckpointError:
        raise
    except ConfigError as exc:
        raise CheckpointError(f"cannot read the checkpoint's cfg.policy: {exc}") from exc
    try:
        return _config_from_policy_cfg(pol, use_ema)
    except (CheckpointError, UnsupportedArchitectureError):
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"the checkpoint's cfg.policy is malformed ({type(exc).__name__}: "
                              f"{str(exc)[:300]}); unresolved interpolations such as "
                              "${oc.env:...} are not supported.") from exc


def _config_from_policy_cfg(pol: dict, use_ema: bool) -> tuple[PolicyConfig, bool]:
    target = str(pol.get("_target_", ""))
    if "transformer" not in target.lower():
        raise UnsupportedArchitectureError(
            f"unsupported policy architecture {target or '(none)'}: bac_ros runs transformer "
            "diffusion policies (DiffusionTransformerLowdimPolicy / "
            "DiffusionTransformerHybridImagePolicy). UNet (DP-C) policies have no transformer "
            "blocks for BAC to cache."
        )
    if pol.get("pred_action_steps_only"):
        raise UnsupportedArchitectureError(
            f"{target}: pred_action_steps_only=True is not supported (the node expects the "
            "full horizon); retrain with pred_action_steps_only=False."
        )
    if not pol.get("obs_as_cond", True):
        raise UnsupportedArchitectureError(
            f"{target}: obs_as_cond=False (inpainting conditioning) is not supported; the "
            "observation must enter through the cross-attention condition."
        )
    for name in ("noise_scheduler", "horizon", "n_obs_steps", "n_action_steps"):
        if name not in pol:
            raise CheckpointError(f"the checkpoint's cfg.policy has no {name!r}; is it a "
                                  "diffusion_policy workspace checkpoint?")
    ns_target = str(pol["noise_scheduler"].get("_target_", ""))
    sched_type = {"DDPMScheduler": "ddpm", "DDIMScheduler": "ddim"}.get(
        ns_target.rsplit(".", 1)[-1])
    if sched_type is None:
        raise UnsupportedArchitectureError(
            f"noise scheduler {ns_target or '(none)'} is not supported; bac_ros runs diffusers' "
            "DDPMScheduler and DDIMScheduler (convert the cfg's noise_scheduler to one of them)."
        )
    # Keys the cfg leaves out take diffusers' constructor defaults, not ours.
    ns = {**_DIFFUSERS_DEFAULTS,
          **{k: v for k, v in pol["noise_scheduler"].items() if not k.startswith("_")}}
    unknown = sorted(set(ns) - set(_DIFFUSERS_DEFAULTS))
    if unknown:
        warnings.warn(f"noise_scheduler options {unknown} are ignored by bac_ros; sampling may "
                      "differ from diffusion_policy's.", stacklevel=2)
    if sched_type == "ddpm":
        ns.pop("set_alpha_to_one"), ns.pop("steps_offset")
    else:
        ns.pop("variance_type")
    sched = NoiseSchedulerConfig(
        type=sched_type,
        num_inference_steps=int(pol.get("num_inference_steps") or ns["num_train_timesteps"]),
        **{k: v for k, v in ns.items() if k in _DIFFUSERS_DEFAULTS},
    )
    horizon, To, Na = int(pol["horizon"]), int(pol["n_obs_steps"]), int(pol["n_action_steps"])
    if "lowdim" in target.lower():
        # Keys a cfg leaves out take TransformerForDiffusion.__init__'s defaults, not ours.
        m = {**_TFD_DEFAULTS,
             **{k: v for k, v in pol["model"].items() if not k.startswith("_")}}
        obs_dim, action_dim = int(pol["obs_dim"]), int(pol["action_dim"])
        shape_meta = ShapeMeta(obs={"obs": {"shape": [obs_dim], "type": "low_dim"}},
                               action_shape=[action_dim])
        try:
            tcfg = TransformerConfig(**m)
        except TypeError as exc:
            raise CheckpointError(f"cfg.policy.model has options bac_ros does not know "
                                  f"({exc}); expected TransformerForDiffusion's.") from exc
        enc = None
    else:
        sm = pol["shape_meta"]
        shape_meta = ShapeMeta(
            obs={k: {"shape": v["shape"], "type": v.get("type", "low_dim")}
                 for k, v in sm["obs"].items()},
            action_shape=sm["action"]["shape"],
        )
        pol = {**_HYBRID_DEFAULTS, **pol}
        crop = pol["crop_shape"]
        enc = ObsEncoderConfig(crop_shape=tuple(crop) if crop else None,
                               use_group_norm=bool(pol["obs_encoder_group_norm"]))
        if crop and not pol.get("eval_fixed_crop"):
            # robomimic 0.2 random-crops even in eval; a deterministic node centre-crops.
            warnings.warn(f"{target}: eval_fixed_crop=False in the cfg; bac_ros centre-crops "
                          "at inference (diffusion_policy would random-crop).", stacklevel=2)
        feat = sum(enc.feature_dim if s.type == "rgb" else s.shape[0]
                   for s in shape_meta.obs.values())
        tcfg = TransformerConfig(
            input_dim=shape_meta.action_dim, output_dim=shape_meta.action_dim, horizon=horizon,
            n_obs_steps=To, cond_dim=feat,
            **{k: pol[k] for k in ("n_layer", "n_head", "n_emb", "p_drop_emb", "p_drop_attn",
                                   "causal_attn", "time_as_cond", "n_cond_layers") if k in pol},
        )
    config = PolicyConfig(shape_meta=shape_meta, transformer=tcfg, scheduler=sched,
                          obs_encoder=enc, horizon=horizon, n_obs_steps=To, n_action_steps=Na,
                          name=target.rsplit(".", 1)[-1])
    return config, use_ema


def _load_dp_ckpt(path: Path, allow_pickle: bool) -> tuple[PolicyConfig, dict]:
    payload = read_dp_payload(path, allow_pickle)
    if not isinstance(payload, dict) or "cfg" not in payload or "state_dicts" not in payload:
        raise CheckpointError(f"{path}: not a diffusion_policy checkpoint (expected keys 'cfg' "
                              f"and 'state_dicts'; got {sorted(payload)[:5]}).")
    config, use_ema = config_from_dp_cfg(payload["cfg"])
    sds = payload["state_dicts"]
    key = "ema_model" if use_ema and "ema_model" in sds else "model"
    if key not in sds:
        raise CheckpointError(f"{path}: state_dicts has no '{key}' entry ({sorted(sds)}).")
    return config, sds[key]


# -- entry points -----------------------------------------------------------------------------
# Far above any DP-T that fits a robot, far below what exhausts a machine: a hostile config
# (horizon 8e6, n_layer 1e5, num_train_timesteps 1e9) is refused before anything is allocated.
LIMITS = {"horizon": 1024, "n_obs_steps": 64, "n_action_steps": 1024, "n_layer": 64,
          "n_head": 128, "n_emb": 8192, "n_cond_layers": 64, "num_train_timesteps": 10_000,
          "num_inference_steps": 10_000, "obs_values": 50_000_000, "params": 2_000_000_000,
          "encoder_width": 4096, "encoder_layers": 32}


def check_resource_limits(config: PolicyConfig, source: str = "?") -> None:
    t, s = config.transformer, config.scheduler
    values = {"horizon": config.horizon, "n_obs_steps": config.n_obs_steps,
              "n_action_steps": config.n_action_steps, "n_layer": t.n_layer,
              "n_head": t.n_head, "n_emb": t.n_emb, "n_cond_layers": t.n_cond_layers,
              "num_train_timesteps": s.num_train_timesteps,
              "num_inference_steps": s.num_inference_steps,
              "obs_values": sum(int(np.prod(o.shape)) for o in config.shape_meta.obs.values()),
              "params": 13 * (t.n_layer + t.n_cond_layers) * t.n_emb ** 2
              + t.n_emb * (t.cond_dim + t.input_dim + t.horizon)}
    enc = config.obs_encoder
    if enc is not None:
        values["encoder_width"] = max(enc.num_keypoints, enc.feature_dim, *enc.conv_channels)
        values["encoder_layers"] = len(enc.conv_channels)
    bad = {k: v for k, v in values.items() if not isinstance(v, int) or v > LIMITS[k]}
    if bad:
        raise CheckpointError(f"{source}: config values {bad} exceed bac_ros's limits "
                              f"{ {k: LIMITS[k] for k in bad} }; refusing to allocate the model "
                              "(a damaged or hostile file).")


def build_policy(config: PolicyConfig, weights: dict[str, torch.Tensor], source: str = "?"):
    check_resource_limits(config, source)
    policy = DiffusionPolicy(config)
    expected = policy.state_dict(keep_vars=True)
    # Map aliases (same tensor under two names) so either name satisfies both.
    alias_of: dict[int, list[str]] = {}
    for k, t in expected.items():
        alias_of.setdefault(id(t), []).append(k)
    weights = {k: v for k, v in weights.items() if not k.endswith("_dummy_variable")}
    unexpected = [k for k in weights if k not in expected and not k.startswith("normalizer.")]
    missing = [k for k, t in expected.items()
               if t.numel() and not any(a in weights for a in alias_of[id(t)])]
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not match the architecture in its config: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}."
        )
    for k, v in weights.items():
        if k in expected and tuple(expected[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{source}: shape mismatch for {k}: checkpoint "
                                  f"{tuple(v.shape)}, config implies {tuple(expected[k].shape)}.")
    full = dict(weights)
    for names in alias_of.values():
        src = next((n for n in names if n in weights), None)
        if src is not None:
            for n in names:
                full.setdefault(n, weights[src])
    policy.load_state_dict(full, strict=False)
    missing_norm = [k for k in (*config.shape_meta.obs, "action") if k not in policy.normalizer]
    if missing_norm:
        raise CheckpointError(f"{source}: checkpoint has no normalizer for {missing_norm} "
                              f"(it has {policy.normalizer.keys()}); re-export it with the "
                              "normalizer the policy was trained with.")
    policy.eval()
    policy.fingerprint = fingerprint_policy(policy)
    return policy


def load_policy(path: str | Path, device: str | torch.device = "cpu",
                allow_pickle: bool = False) -> DiffusionPolicy:
    """Load ours (.safetensors) or diffusion_policy's (.ckpt) format; see module docstring."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.safetensors"))
        if len(found) != 1:
            raise CheckpointError(f"{path}: expected exactly one .safetensors file, found "
                                  f"{[p.name for p in found]}.")
        path = found[0]
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path "
                              "(ROS parameter `checkpoint`).")
    if path.suffix == ".safetensors":
        config, weights = _load_safetensors(path)
    elif path.suffix in (".ckpt", ".pt", ".pth"):
        config, weights = _load_dp_ckpt(path, allow_pickle)
    else:
        raise CheckpointError(f"{path}: unknown checkpoint type {path.suffix!r}; expected "
                              ".safetensors (bac_ros) or .ckpt (diffusion_policy).")
    weights = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    policy = build_policy(config, weights, source=str(path))
    return policy.to(device)
