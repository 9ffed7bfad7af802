"""Train DP-T on the Push-T demonstrations, following diffusion_policy's recipe.

AdamW (lr 1e-4, weight decay 1e-3, betas 0.9/0.95), cosine LR with warm-up, EMA
(power 0.75, max 0.9999), DDPM 100 steps squaredcos_cap_v2, epsilon MSE loss, 2 observation
steps, 8 executed actions; horizon 16 (low-dim) or 10 (image); sequences padded at episode ends
as diffusion_policy's SequenceSampler does. Two observation setups: ``lowdim`` (8 T keypoints +
agent position) and ``image`` (96x96 RGB re-rendered from the demonstrations + agent position;
robomimic ResNet18 encoder, random 84x84 crops, encoder weight decay 1e-6, as diffusion_policy's
image config). Resumable; progress bar; loss-curve PNG; saves our .safetensors and a
diffusion_policy-format .ckpt.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bac_ros.engine.checkpoint import fingerprint_policy, save_policy
from bac_ros.engine.config import (
    NoiseSchedulerConfig,
    ObsEncoderConfig,
    PolicyConfig,
    ShapeMeta,
    TransformerConfig,
)
from bac_ros.engine.dp_export import save_dp_checkpoint
from bac_ros.engine.normalizer import image_range_params
from bac_ros.engine.policy import DiffusionPolicy
from bac_ros.io_utils import atomic_write_text
from bac_ros.pusht.env import CONTROL_PERIOD_S, JOINT_NAMES, KEYPOINT_NAMES

OBS_TYPES = ("lowdim", "image")


@dataclass
class TrainConfig:
    demos: str = "data/pusht/demos.npz"
    out: str = "runs/pusht_lowdim"
    obs: str = "lowdim"  # lowdim | image
    frames_cache: str = "runs/pusht_frames.npz"  # re-rendered demo frames (image policies)
    max_episodes: int = 0  # 0 = every demonstration
    n_layer: int = 8
    n_head: int = 4
    n_emb: int = 128
    p_drop_attn: float = 0.01
    horizon: int = 0  # 0 = diffusion_policy's Push-T value: 16 low-dim, 10 image
    n_obs_steps: int = 2
    n_action_steps: int = 8
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 1e-3
    warmup_steps: int = 500
    num_steps: int = 6000
    checkpoint_every: int = 500
    seed: int = 42
    device: str = "cpu"
    # image policies: "resnet18" (diffusion_policy's recipe) or "conv" (a small CPU-sized
    # trunk whose 16 features are first trained to regress the T's keypoints, see below)
    encoder: str = "resnet18"
    encoder_steps: int = 3000  # "conv": supervised keypoint pre-training steps (batch 128)
    # "conv": start the transformer, action and agent-position normalizers from this low-dim
    # policy (its keypoint input is what the pre-trained encoder regresses); "" = scratch
    init_from: str = ""
    # learning curve: closed-loop coverage of the EMA policy every eval_every steps (0 = off)
    eval_every: int = 0
    eval_episodes: int = 20
    eval_n_action_steps: int = 0  # 0 = n_action_steps

    def __post_init__(self) -> None:
        if self.num_steps < 0 or self.batch_size < 1:
            raise ValueError("num_steps must be >= 0 (0: only the pre-trained / initial "
                             "policy is saved) and batch_size >= 1.")
        if self.obs not in OBS_TYPES:
            raise ValueError(f"`obs` must be one of {OBS_TYPES}. Got {self.obs!r}.")
        if self.eval_every < 0 or self.eval_episodes < 1 or self.eval_n_action_steps < 0:
            raise ValueError("`eval_every` >= 0, `eval_episodes` >= 1 and "
                             "`eval_n_action_steps` >= 0 are required.")
        if self.encoder not in ("resnet18", "conv"):
            raise ValueError(f"`encoder` must be 'resnet18' or 'conv'. Got {self.encoder!r}.")
        if self.encoder_steps < 0:
            raise ValueError(f"`encoder_steps` must be >= 0. Got {self.encoder_steps}.")
        if self.init_from and (self.obs != "image" or self.encoder != "conv"):
            raise ValueError("`init_from` applies to `--obs image --encoder conv` only.")
        if self.max_episodes < 0:
            raise ValueError(f"`max_episodes` must be >= 0. Got {self.max_episodes}.")
        if self.horizon == 0:
            self.horizon = 16 if self.obs == "lowdim" else 10
        if self.horizon < self.n_obs_steps + self.n_action_steps - 1:
            raise ValueError(f"`horizon` ({self.horizon}) must cover n_obs_steps - 1 + "
                             f"n_action_steps ({self.n_obs_steps - 1 + self.n_action_steps}).")


class LowDimSequences(torch.utils.data.Dataset):
    """(obs history, action sequence) windows with diffusion_policy's episode padding."""

    def __init__(self, demos_path: str, horizon: int, n_obs_steps: int, n_action_steps: int,
                 max_episodes: int = 0):
        d = np.load(demos_path)
        ends = d["episode_ends"]
        if max_episodes:
            ends = ends[:max_episodes]
        self.obs, self.actions = d["obs_lowdim"][:ends[-1]], d["actions"][:ends[-1]]
        self.seeds = d["seeds"][:len(ends)]
        self.episode_ends = ends
        starts = np.concatenate([[0], ends[:-1]])
        pad_before, pad_after = n_obs_steps - 1, n_action_steps - 1
        self.index = []
        for s, e in zip(starts, ends):
            for i in range(s - pad_before, e - horizon + pad_after + 1):
                self.index.append((i, s, e))
        self.horizon = horizon
        self.n_obs_steps = n_obs_steps

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> dict:
        i, s, e = self.index[k]
        idx = np.clip(np.arange(i, i + self.horizon), s, e - 1)  # repeat edge frames
        obs = self.obs[idx]
        return {"obs": {"keypoints": torch.from_numpy(obs[:, :16]),
                        "agent_pos": torch.from_numpy(obs[:, 16:18])},
                "action": torch.from_numpy(self.actions[idx])}


class ImageSequences(LowDimSequences):
    """The same windows with the camera frame instead of the keypoints: only the
    n_obs_steps observed frames are returned (the policy conditions on nothing else)."""

    def __init__(self, demos_path: str, horizon: int, n_obs_steps: int, n_action_steps: int,
                 frames_cache: str, max_episodes: int = 0, progress: bool = True):
        super().__init__(demos_path, horizon, n_obs_steps, n_action_steps, max_episodes)
        self.frames = render_frames(demos_path, frames_cache, len(self.episode_ends), progress)
        if len(self.frames) < len(self.obs):
            raise ValueError(f"{frames_cache} holds {len(self.frames)} frames but the demos "
                             f"need {len(self.obs)}; delete it to re-render")

    cond: torch.Tensor | None = None  # a frozen encoder's features per frame (N, cond_dim)

    def __getitem__(self, k: int) -> dict:
        i, s, e = self.index[k]
        idx = np.clip(np.arange(i, i + self.horizon), s, e - 1)
        o = idx[: self.n_obs_steps]
        if self.cond is not None:
            return {"cond": self.cond[o], "action": torch.from_numpy(self.actions[idx])}
        img = frames_to_tensor(self.frames[o])
        return {"obs": {"image": img, "agent_pos": torch.from_numpy(self.obs[o, 16:18])},
                "action": torch.from_numpy(self.actions[idx])}


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) frames -> float (N, 3, H, W) in [0, 1], the policy's rgb input."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


def render_frames(demos_path: str, cache: str, n_episodes: int, progress: bool = True
                  ) -> np.ndarray:
    """96x96 RGB frame before every demo action, re-rendered by replaying each demo (bit-exact
    in gym-pusht), cached as uint8. The replayed agent positions are checked against the
    stored low-dim observations, so a changed simulator cannot silently shift the frames."""
    from bac_ros.pusht.demos import replay_observations

    cache_path = Path(cache)
    d = np.load(demos_path)
    ends = d["episode_ends"][:n_episodes]
    if cache_path.exists():
        with np.load(cache_path) as c:
            if len(c["frames"]) >= ends[-1] and \
                    np.array_equal(c["seeds"][:n_episodes], d["seeds"][:n_episodes]):
                return c["frames"]
    starts = np.concatenate([[0], ends[:-1]])
    frames = []
    for ep in tqdm(range(len(ends)), desc="render demo frames", disable=not progress):
        acts = d["actions"][starts[ep]:ends[ep]]
        obs = replay_observations(int(d["seeds"][ep]), acts, "pixels_agent_pos")
        agent = np.array([o["agent_pos"] for o in obs], dtype=np.float32)
        if not np.allclose(agent, d["obs_lowdim"][starts[ep]:ends[ep], 16:18], atol=1e-3):
            raise RuntimeError(f"replaying demo {ep} (seed {d['seeds'][ep]}) diverged from the "
                               "recorded states: regenerate the demos with this gym-pusht")
        frames.append(np.stack([o["pixels"] for o in obs]).astype(np.uint8))
    out = np.concatenate(frames)
    import io

    from bac_ros.io_utils import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, frames=out, seeds=d["seeds"][:n_episodes])
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cache_path, buf.getvalue())
    return out


def build_policy(cfg: TrainConfig, data: LowDimSequences) -> DiffusionPolicy:
    if cfg.obs == "image":
        return _build_image_policy(cfg, data)
    pc = PolicyConfig(
        shape_meta=ShapeMeta(obs={"keypoints": {"shape": [16], "type": "low_dim"},
                                  "agent_pos": {"shape": [2], "type": "low_dim"}},
                             action_shape=[2]),
        transformer=TransformerConfig(input_dim=2, output_dim=2, horizon=cfg.horizon,
                                      n_obs_steps=cfg.n_obs_steps, cond_dim=18,
                                      n_layer=cfg.n_layer, n_head=cfg.n_head, n_emb=cfg.n_emb,
                                      p_drop_emb=0.0, p_drop_attn=cfg.p_drop_attn),
        scheduler=NoiseSchedulerConfig(type="ddpm", num_train_timesteps=100,
                                       num_inference_steps=100),
        horizon=cfg.horizon, n_obs_steps=cfg.n_obs_steps, n_action_steps=cfg.n_action_steps,
        action_names=list(JOINT_NAMES),
        obs_low_dim_names={"keypoints": list(KEYPOINT_NAMES),
                           "agent_pos": list(JOINT_NAMES)},
        control_period_s=CONTROL_PERIOD_S, name="pusht_lowdim_dpt")
    policy = DiffusionPolicy(pc)
    policy.normalizer.fit_field("keypoints", data.obs[:, :16])
    policy.normalizer.fit_field("agent_pos", data.obs[:, 16:18])
    policy.normalizer.fit_field("action", data.actions)
    return policy


def _build_image_policy(cfg: TrainConfig, data: LowDimSequences) -> DiffusionPolicy:
    if cfg.encoder == "conv":
        # 16 signed features = the T's 8 keypoints once pre-trained; no crop: the frames come
        # from the same renderer at train and test time and a crop would hide where the T is
        # relative to the (fixed) goal.
        enc = ObsEncoderConfig(crop_shape=None, backbone="conv", conv_channels=(32, 64, 64),
                               num_keypoints=32, feature_dim=16, feature_activation="none")
    else:
        enc = ObsEncoderConfig(crop_shape=(84, 84))  # robomimic / diffusion_policy defaults
    pc = PolicyConfig(
        shape_meta=ShapeMeta(obs={"image": {"shape": [3, 96, 96], "type": "rgb"},
                                  "agent_pos": {"shape": [2], "type": "low_dim"}},
                             action_shape=[2]),
        transformer=TransformerConfig(input_dim=2, output_dim=2, horizon=cfg.horizon,
                                      n_obs_steps=cfg.n_obs_steps, cond_dim=enc.feature_dim + 2,
                                      n_layer=cfg.n_layer, n_head=cfg.n_head, n_emb=cfg.n_emb,
                                      p_drop_emb=0.0, p_drop_attn=cfg.p_drop_attn),
        scheduler=NoiseSchedulerConfig(type="ddpm", num_train_timesteps=100,
                                       num_inference_steps=100),
        obs_encoder=enc, horizon=cfg.horizon, n_obs_steps=cfg.n_obs_steps,
        n_action_steps=cfg.n_action_steps, action_names=list(JOINT_NAMES),
        obs_low_dim_names={"agent_pos": list(JOINT_NAMES)},
        control_period_s=CONTROL_PERIOD_S, name="pusht_image_dpt")
    policy = DiffusionPolicy(pc)
    policy.normalizer.set_field("image", image_range_params())
    policy.normalizer.fit_field("agent_pos", data.obs[:, 16:18])
    policy.normalizer.fit_field("action", data.actions)
    if cfg.init_from:
        _init_from_lowdim(policy, cfg.init_from)
    return policy


def _init_from_lowdim(policy: DiffusionPolicy, path: str) -> None:
    """Copy a low-dim Push-T policy's transformer and normalizers (action, agent_pos) into an
    image policy whose encoder yields the keypoints' normalized values: the composite is a
    working image policy before any diffusion training."""
    from bac_ros.engine.checkpoint import load_policy

    src = load_policy(path)
    t_src, t_dst = src.config.transformer, policy.config.transformer
    same = ("horizon", "n_obs_steps", "cond_dim", "n_layer", "n_head", "n_emb",
            "causal_attn", "time_as_cond", "n_cond_layers")
    diff = {k: (getattr(t_src, k), getattr(t_dst, k)) for k in same
            if getattr(t_src, k) != getattr(t_dst, k)}
    if diff or list(src.config.shape_meta.obs) != ["keypoints", "agent_pos"]:
        raise ValueError(f"--init-from {path}: not a Push-T low-dim policy with this "
                         f"transformer (differs in {diff}); pass --horizon/--n-emb/... to match")
    policy.model.load_state_dict({k: v.float() for k, v in src.model.state_dict().items()})
    for key in ("action", "agent_pos", "keypoints"):
        policy.normalizer.set_field(key, _copy_field(src.normalizer, key))


def _copy_field(normalizer, key: str):
    from bac_ros.engine.normalizer import _params

    p = normalizer.params_dict[key]
    return _params(p["scale"].detach().float(), p["offset"].detach().float(),
                   {k: v.detach().float() for k, v in p["input_stats"].items()})


def pretrain_keypoint_encoder(cfg: TrainConfig, data: ImageSequences, policy: DiffusionPolicy,
                              out: Path, progress: bool = True) -> dict:
    """Supervised pre-training of the image encoder: frame -> the T's 8 keypoints (normalized
    as the low-dim policy sees them). The simulator knows where the T is, so the encoder gets
    a direct target instead of learning localisation from the denoising loss alone (which
    needs far more steps than a CPU can give). The first 10 episodes (fewer for small sets) are
    held out to report the error in pixels. Cached in OUT/encoder_pretrain.pt (a resumed run skips it)."""
    from diffusers.optimization import get_scheduler

    cache = out / "encoder_pretrain.pt"
    enc = policy.obs_encoder.obs_nets["image"]
    if cache.exists():
        st = torch.load(cache, weights_only=True)
        enc.load_state_dict(st["encoder"])
        return st["metrics"]
    if "keypoints" not in policy.normalizer.params_dict:
        policy.normalizer.fit_field("keypoints", data.obs[:, :16])
    kp = policy.normalizer.normalize("keypoints", torch.from_numpy(data.obs[:, :16]))
    n_val = int(data.episode_ends[max(1, min(10, len(data.episode_ends) // 10)) - 1])
    train_idx = np.arange(n_val, len(data.obs))
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(enc.parameters(), lr=1e-3, weight_decay=1e-6)
    sched = get_scheduler("cosine", opt, num_warmup_steps=100,
                          num_training_steps=cfg.encoder_steps)

    def frames(idx):
        x = frames_to_tensor(data.frames[idx])
        return policy.normalizer.normalize("image", x)

    enc.train()
    bar = tqdm(range(cfg.encoder_steps), desc="encoder", disable=not progress)
    losses = []
    for _ in bar:
        idx = train_idx[torch.randint(0, len(train_idx), (128,), generator=gen).numpy()]
        loss = torch.nn.functional.mse_loss(enc(frames(idx)), kp[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.5f}")
    enc.eval()
    with torch.no_grad():
        pred = torch.cat([enc(frames(np.arange(i, min(i + 512, n_val))))
                          for i in range(0, n_val, 512)])
    err_px = (policy.normalizer.unnormalize("keypoints", pred).numpy()
              - data.obs[:n_val, :16]).reshape(n_val, 8, 2)
    dist = np.linalg.norm(err_px, axis=-1)
    metrics = {"encoder_steps": cfg.encoder_steps,
               "initial_loss": float(np.mean(losses[:10])) if losses else None,
               "final_loss": float(np.mean(losses[-100:])) if losses else None,
               "heldout_frames": n_val, "heldout_keypoint_error_px_mean": float(dist.mean()),
               "heldout_keypoint_error_px_p95": float(np.percentile(dist, 95))}
    torch.save({"encoder": enc.state_dict(), "metrics": metrics}, cache)
    atomic_write_text(out / "encoder_pretrain.json", json.dumps(metrics, indent=1))
    return metrics


def _optim_groups(policy: DiffusionPolicy, cfg: TrainConfig) -> list[dict]:
    groups = policy.model.get_optim_groups(cfg.weight_decay)
    enc = [p for p in policy.obs_encoder.parameters() if p.requires_grad]
    if enc:  # diffusion_policy's obs_encoder_weight_decay for image policies
        groups.append({"params": enc, "weight_decay": 1e-6})
    return groups


def train(cfg: TrainConfig, resume: bool = True, progress: bool = True) -> dict:
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.obs == "image":
        data = ImageSequences(cfg.demos, cfg.horizon, cfg.n_obs_steps, cfg.n_action_steps,
                              cfg.frames_cache, cfg.max_episodes, progress)
    else:
        data = LowDimSequences(cfg.demos, cfg.horizon, cfg.n_obs_steps, cfg.n_action_steps,
                               cfg.max_episodes)
    if len(data) < cfg.batch_size:
        raise ValueError(f"only {len(data)} training windows for batch_size {cfg.batch_size}: "
                         "lower --batch-size or use more episodes")
    policy = build_policy(cfg, data).to(cfg.device).train()
    encoder_metrics = None
    if cfg.obs == "image" and cfg.encoder == "conv":
        encoder_metrics = pretrain_keypoint_encoder(cfg, data, policy, out, progress)
        # Frozen from here on: the denoiser trains on the features the robot will see, and
        # they are computed once (no crop, no augmentation) instead of every step.
        policy.obs_encoder.requires_grad_(False)
        data.cond = _precompute_condition(policy, data)
    ema_policy = copy.deepcopy(policy).eval()
    opt = torch.optim.AdamW(_optim_groups(policy, cfg), lr=cfg.lr, betas=(0.9, 0.95))
    sched = get_scheduler("cosine", opt, num_warmup_steps=cfg.warmup_steps,
                          num_training_steps=max(1, cfg.num_steps))
    ema = EMAModel(policy.parameters(), decay=0.9999, min_decay=0.0, use_ema_warmup=True,
                   inv_gamma=1.0, power=0.75)
    state_path = out / "train_state.pt"
    step, losses = 0, []
    if resume and state_path.exists():
        st = torch.load(state_path, weights_only=False)  # our own file, written below
        policy.load_state_dict(st["policy"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["lr_scheduler"])
        ema.load_state_dict(st["ema"])
        step, losses = st["step"], st["losses"]
        torch.set_rng_state(st["rng"])
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, shuffle=True,
                                         drop_last=True, num_workers=0)
    bar = tqdm(total=cfg.num_steps, initial=step, desc="train", disable=not progress)
    t0 = time.time()
    while step < cfg.num_steps:
        for batch in loader:
            loss = policy.compute_loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            ema.step(policy.parameters())
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.num_steps:
                _save(cfg, out, policy, ema, ema_policy, opt, sched, step, losses, state_path)
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.num_steps):
                ema.copy_to(ema_policy.parameters())
                learning_curve_point(cfg, out, ema_policy.eval(), step, losses)
            if step >= cfg.num_steps:
                break
    bar.close()
    if cfg.num_steps == 0:  # the initial policy (e.g. a pre-trained encoder + --init-from)
        _save_policy(cfg, out, policy)
    summary = {"steps": step, "final_loss": float(np.mean(losses[-100:])) if losses else None,
               "seconds": round(time.time() - t0, 1), "out": str(out)}
    if encoder_metrics:
        summary["encoder"] = encoder_metrics
    return summary


def _precompute_condition(policy: DiffusionPolicy, data: ImageSequences) -> torch.Tensor:
    """The frozen encoder's features for every demo frame, plus agent_pos: (N, cond_dim)."""
    enc = policy.obs_encoder.eval()
    with torch.no_grad():
        feats = []
        for i in range(0, len(data.obs), 512):
            img = frames_to_tensor(data.frames[i:i + 512])
            pos = torch.from_numpy(data.obs[i:i + 512, 16:18])
            nobs = {"image": policy.normalizer.normalize("image", img),
                    "agent_pos": policy.normalizer.normalize("agent_pos", pos)}
            feats.append(enc(nobs))
    return torch.cat(feats)


def _save_policy(cfg: TrainConfig, out: Path, policy: DiffusionPolicy) -> None:
    """OUT/policy.safetensors (fingerprinted, eval mode) and the config that made it."""
    policy.eval()
    policy.fingerprint = fingerprint_policy(policy)
    save_policy(policy, out / "policy.safetensors")
    atomic_write_text(out / "train_config.json", json.dumps(asdict(cfg), indent=2))


def _save(cfg, out, policy, ema, ema_policy, opt, sched, step, losses, state_path):
    import io

    from bac_ros.io_utils import atomic_write_bytes

    ema.copy_to(ema_policy.parameters())
    _save_policy(cfg, out, ema_policy)
    if cfg.encoder != "conv":  # diffusion_policy has no such encoder: no .ckpt to write
        save_dp_checkpoint(ema_policy, out / "policy.ckpt", model_state=policy.state_dict(),
                           optimizer_state=opt.state_dict())
    buf = io.BytesIO()
    torch.save({"policy": policy.state_dict(), "optimizer": opt.state_dict(),
                "lr_scheduler": sched.state_dict(), "ema": ema.state_dict(), "step": step,
                "losses": losses, "rng": torch.get_rng_state()}, buf)
    atomic_write_bytes(state_path, buf.getvalue())
    _plot(losses, out / "loss.png")


def learning_curve_point(cfg: TrainConfig, out: Path, policy: DiffusionPolicy, step: int,
                         losses: list) -> dict:
    """Closed-loop coverage of the EMA policy at full compute on fixed test seeds (the same
    every time), next to the training loss: out/learning_curve.json and .png."""
    import dataclasses

    from bac_ros.pusht.eval import rollout

    saved = policy.config
    if cfg.eval_n_action_steps:
        policy.config = dataclasses.replace(saved, n_action_steps=cfg.eval_n_action_steps)
    try:
        seeds = [900_000 + i for i in range(cfg.eval_episodes)]
        with torch.no_grad():
            succ, cov, _ = rollout(policy, seeds, 300, progress=False)
    finally:
        policy.config = saved
    path = out / "learning_curve.json"
    curve = json.loads(path.read_text()) if path.exists() else []
    curve = [c for c in curve if c["step"] < step]  # a resumed run replaces later points
    point = {"step": step, "loss": float(np.mean(losses[-100:])),
             "mean_max_coverage": float(cov.mean()), "success_rate": float(succ.mean()),
             "episodes": len(seeds)}
    curve.append(point)
    atomic_write_text(path, json.dumps(curve, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    steps = [c["step"] for c in curve]
    ax.plot(steps, [c["mean_max_coverage"] for c in curve], "o-", label="mean max coverage")
    ax.plot(steps, [c["success_rate"] for c in curve], "s-", label="success rate")
    ax.set_ylim(0, 1)
    ax.set_xlabel("step")
    ax2 = ax.twinx()
    ax2.plot(steps, [c["loss"] for c in curve], "k--", alpha=0.5, label="loss")
    ax2.set_yscale("log")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=100)
    plt.close(fig)
    return point


def _plot(losses, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(losses, alpha=0.3, label="batch")
    k = max(1, len(losses) // 100)
    ax.plot(np.convolve(losses, np.ones(k) / k, mode="valid"), label=f"mean of {k}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("denoising MSE")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
