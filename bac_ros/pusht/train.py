"""Train DP-T on the Push-T demonstrations, following diffusion_policy's recipe.

AdamW (lr 1e-4, weight decay 1e-3, betas 0.9/0.95), cosine LR with warm-up, EMA
(power 0.75, max 0.9999), DDPM 100 steps squaredcos_cap_v2, epsilon MSE loss, horizon 16,
2 observation steps, 8 executed actions; sequences padded at episode ends as
diffusion_policy's SequenceSampler does. Resumable; progress bar; loss-curve PNG; saves our
.safetensors and a diffusion_policy-format .ckpt.
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
from bac_ros.engine.config import NoiseSchedulerConfig, PolicyConfig, ShapeMeta, TransformerConfig
from bac_ros.engine.dp_export import save_dp_checkpoint
from bac_ros.engine.policy import DiffusionPolicy
from bac_ros.io_utils import atomic_write_text
from bac_ros.pusht.env import CONTROL_PERIOD_S, JOINT_NAMES, KEYPOINT_NAMES


@dataclass
class TrainConfig:
    demos: str = "data/pusht/demos.npz"
    out: str = "runs/pusht_lowdim"
    n_layer: int = 8
    n_head: int = 4
    n_emb: int = 128
    p_drop_attn: float = 0.01
    horizon: int = 16
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

    def __post_init__(self) -> None:
        if self.num_steps < 1 or self.batch_size < 1:
            raise ValueError("num_steps and batch_size must be >= 1.")


class LowDimSequences(torch.utils.data.Dataset):
    """(obs history, action sequence) windows with diffusion_policy's episode padding."""

    def __init__(self, demos_path: str, horizon: int, n_obs_steps: int, n_action_steps: int):
        d = np.load(demos_path)
        self.obs, self.actions = d["obs_lowdim"], d["actions"]
        ends = d["episode_ends"]
        starts = np.concatenate([[0], ends[:-1]])
        pad_before, pad_after = n_obs_steps - 1, n_action_steps - 1
        self.index = []
        for s, e in zip(starts, ends):
            for i in range(s - pad_before, e - horizon + pad_after + 1):
                self.index.append((i, s, e))
        self.horizon = horizon

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> dict:
        i, s, e = self.index[k]
        idx = np.clip(np.arange(i, i + self.horizon), s, e - 1)  # repeat edge frames
        obs = self.obs[idx]
        return {"obs": {"keypoints": torch.from_numpy(obs[:, :16]),
                        "agent_pos": torch.from_numpy(obs[:, 16:18])},
                "action": torch.from_numpy(self.actions[idx])}


def build_policy(cfg: TrainConfig, data: LowDimSequences) -> DiffusionPolicy:
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


def train(cfg: TrainConfig, resume: bool = True, progress: bool = True) -> dict:
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = LowDimSequences(cfg.demos, cfg.horizon, cfg.n_obs_steps, cfg.n_action_steps)
    policy = build_policy(cfg, data).to(cfg.device).train()
    ema_policy = copy.deepcopy(policy).eval()
    opt = torch.optim.AdamW(policy.model.get_optim_groups(cfg.weight_decay), lr=cfg.lr,
                            betas=(0.9, 0.95))
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
            losses.append(float(loss))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.num_steps:
                _save(cfg, out, policy, ema, ema_policy, opt, sched, step, losses, state_path)
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
