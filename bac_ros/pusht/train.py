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
    # learning curve: closed-loop coverage of the EMA policy every eval_every steps (0 = off)
    eval_every: int = 0
    eval_episodes: int = 20
    eval_n_action_steps: int = 0  # 0 = n_action_steps

    def __post_init__(self) -> None:
        if self.num_steps < 1 or self.batch_size < 1:
            raise ValueError("num_steps and batch_size must be >= 1.")
        if self.obs not in OBS_TYPES:
            raise ValueError(f"`obs` must be one of {OBS_TYPES}. Got {self.obs!r}.")
        if self.eval_every < 0 or self.eval_episodes < 1 or self.eval_n_action_steps < 0:
            raise ValueError("`eval_every` >= 0, `eval_episodes` >= 1 and "
                             "`eval_n_action_steps` >= 0 are required.")
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

    def __getitem__(self, k: int) -> dict:
        i, s, e = self.index[k]
        idx = np.clip(np.arange(i, i + self.horizon), s, e - 1)
        o = idx[: self.n_obs_steps]
        img = torch.from_numpy(self.frames[o]).permute(0, 3, 1, 2).float() / 255.0
        return {"obs": {"image": img, "agent_pos": torch.from_numpy(self.obs[o, 16:18])},
                "action": torch.from_numpy(self.actions[idx])}


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
    return policy


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
    ema_policy = copy.deepcopy(policy).eval()
    opt = torch.optim.AdamW(_optim_groups(policy, cfg), lr=cfg.lr, betas=(0.9, 0.95))
    sched = get_scheduler("cosine", opt, num_warmup_steps=cfg.warmup_steps,
                          num_training_steps=cfg.num_steps)
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
    return {"steps": step, "final_loss": float(np.mean(losses[-100:])),
            "seconds": round(time.time() - t0, 1), "out": str(out)}


def _save(cfg, out, policy, ema, ema_policy, opt, sched, step, losses, state_path):
    import io

    from bac_ros.io_utils import atomic_write_bytes

    ema.copy_to(ema_policy.parameters())
    ema_policy.eval()
    ema_policy.fingerprint = fingerprint_policy(ema_policy)
    save_policy(ema_policy, out / "policy.safetensors")
    save_dp_checkpoint(ema_policy, out / "policy.ckpt", model_state=policy.state_dict(),
                       optimizer_state=opt.state_dict())
    buf = io.BytesIO()
    torch.save({"policy": policy.state_dict(), "optimizer": opt.state_dict(),
                "lr_scheduler": sched.state_dict(), "ema": ema.state_dict(), "step": step,
                "losses": losses, "rng": torch.get_rng_state()}, buf)
    atomic_write_bytes(state_path, buf.getvalue())
    atomic_write_text(out / "train_config.json", json.dumps(asdict(cfg), indent=2))
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
