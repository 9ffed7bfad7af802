"""Closed-loop Push-T evaluation of full compute vs BAC and the baselines.

All episodes of a method run together: N environments are stepped in lock-step and every
re-plan is ONE batched ``policy.predict``. Every method sees the same test seeds and the same
initial noise per (episode, chunk), so differences come from caching alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bac_ros.bac.baselines import build_schedule
from bac_ros.bac.cache import ScheduledBlockCache
from bac_ros.bac.capture import capture_features
from bac_ros.bac.flops import model_flops
from bac_ros.bac.similarity import caching_error, cosine_similarity_matrix
from bac_ros.pusht.env import make_env

# (name, scheduler, K, schedule method, S, BUA n)
DEFAULT_METHODS = [
    ("full DDPM-100", "ddpm", 100, "full", None, 0),
    ("BAC S=10 n=5", "ddpm", 100, "bac", 10, 5),
    ("BAC S=7 n=5", "ddpm", 100, "bac", 7, 5),
    ("BAC S=5 n=5", "ddpm", 100, "bac", 5, 5),
    ("Uniform S=10", "ddpm", 100, "uniform", 10, 0),
    ("ACS w/o BUA S=10", "ddpm", 100, "acs", 10, 0),
    ("DDIM-10", "ddim", 10, "full", None, 0),
]


@dataclass
class EvalConfig:
    episodes: int = 20
    first_seed: int = 900_000  # test seeds, disjoint from the demonstration seeds
    max_steps: int = 300
    methods: list = field(default_factory=lambda: list(DEFAULT_METHODS))
    gif_episodes: int = 2
    calib_observations: int = 32
    calib_seeds: tuple = (0, 1)  # noise seeds per calibration observation
    demos: str = "data/pusht/demos.npz"  # calibration histories come from these demos

    def __post_init__(self) -> None:
        for name in ("episodes", "max_steps", "calib_observations"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1. Got {getattr(self, name)}.")
        if not 0 <= self.gif_episodes <= self.episodes:
            raise ValueError(f"`gif_episodes` must be in [0, episodes={self.episodes}]. "
                             f"Got {self.gif_episodes}.")
        if not self.methods:
            raise ValueError("`methods` must list at least one method.")
        if 100_000 <= self.first_seed < 100_000 + 10_000:
            raise ValueError(f"`first_seed` {self.first_seed} overlaps the demonstration seeds "
                             "(100000+); evaluate on unseen starts.")


def _obs_dict(hist, policy):
    """Stack per-env observation histories into the policy's (B, To, *shape) layout."""
    keys = list(policy.config.shape_meta.obs)
    out = {}
    for k in keys:
        if k == "keypoints":
            out[k] = np.stack([[o["environment_state"] for o in h] for h in hist])
        elif k == "agent_pos":
            out[k] = np.stack([[o["agent_pos"] for o in h] for h in hist])
        elif policy.config.shape_meta.obs[k].type == "rgb":
            out[k] = np.stack([[o["pixels"].transpose(2, 0, 1) / 255.0 for o in h]
                               for h in hist])
    return {k: v.astype(np.float32) for k, v in out.items()}


def _obs_type(policy) -> str:
    return "pixels_agent_pos" if policy.config.shape_meta.rgb_keys else \
        "environment_state_agent_pos"


def rollout(policy, cfg: EvalConfig, cache=None, record: int = 0, progress: bool = True):
    """Run cfg.episodes episodes together. Returns (success, max_coverage, frames)."""
    To, Na = policy.config.n_obs_steps, policy.config.n_action_steps
    envs = [make_env(_obs_type(policy)) for _ in range(cfg.episodes)]
    obs = [e.reset(seed=cfg.first_seed + i)[0] for i, e in enumerate(envs)]
    hist = [[o] * To for o in obs]
    done = np.zeros(len(envs), bool)
    success = np.zeros(len(envs), bool)
    max_cov = np.zeros(len(envs))
    frames: list[list[np.ndarray]] = [[] for _ in range(record)]
    step, chunk = 0, 0
    bar = tqdm(total=cfg.max_steps, desc="steps", disable=not progress, leave=False)
    while step < cfg.max_steps and not done.all():
        gen = torch.Generator().manual_seed(10_000 + chunk)  # same noise for every method
        pred = policy.predict(_obs_dict(hist, policy), generator=gen, cache=cache)
        chunk += 1
        for j in range(Na):
            for i, e in enumerate(envs):
                if done[i]:
                    continue
                o, _, term, _, info = e.step(pred.action[i, j].astype(np.float64))
                hist[i] = hist[i][1:] + [o]
                max_cov[i] = max(max_cov[i], info["coverage"])
                if term:
                    done[i] = success[i] = True
                if i < record:
                    frames[i].append(e.render())
            step += 1
            bar.update(1)
            if step >= cfg.max_steps:
                break
    bar.close()
    for e in envs:
        e.close()
    return success, max_cov, frames


def calibration_histories(policy, cfg: EvalConfig) -> list[dict]:
    """Mid-episode observation histories from the expert demonstrations (replayed in the
    policy's observation type), as `bac calibrate` uses them. Initial states alone are a poor
    calibration set: the agent stands still, so the block features' trajectories across the
    denoising steps differ from the moving scenes the policy meets (measured: BAC S=10 calibrated
    on 4 initial states reached coverage 0.25 vs 0.58 at full compute)."""
    from bac_ros.pusht.demos import replay_observations

    d = np.load(cfg.demos)
    ends = d["episode_ends"]
    starts = np.concatenate([[0], ends[:-1]])
    rng = np.random.default_rng(0)
    To = policy.config.n_obs_steps
    out = []
    for ep in rng.choice(len(ends), size=cfg.calib_observations, replace=False):
        acts = d["actions"][starts[ep]:ends[ep]]
        obs = replay_observations(int(d["seeds"][ep]), acts, _obs_type(policy))
        t = int(rng.integers(To - 1, len(obs)))
        out.append(_obs_dict([obs[t - To + 1:t + 1]], policy))
    return out


def evaluate(policy, cfg: EvalConfig, out_dir: str | Path, progress: bool = True) -> list[dict]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks, flops = policy.model.blocks(), model_flops(policy.model)
    calib = calibration_histories(policy, cfg)
    stats: dict = {}
    rows, gifs = [], {}
    for name, kind, K, method, S, n in cfg.methods:
        policy.set_scheduler(kind, K)
        cache, frac = None, 1.0
        if method != "full":
            if (kind, K) not in stats:
                feats = capture_features(policy, calib, list(cfg.calib_seeds), progress=False)
                stats[(kind, K)] = (np.stack([cosine_similarity_matrix(f).numpy()
                                              for f in feats]),
                                    np.array([caching_error(f).item() for f in feats]))
            sim, err = stats[(kind, K)]
            sched = build_schedule(method, blocks, K, S, policy.fingerprint, kind, sim, err,
                                   bua_top_n=n, flops=flops)
            cache, frac = ScheduledBlockCache(sched, blocks), sched.computed_fraction
        record = cfg.gif_episodes if name in ("full DDPM-100", "BAC S=10 n=5") else 0
        succ, cov, frames = rollout(policy, cfg, cache, record, progress)
        rows.append({"method": name, "episodes": cfg.episodes,
                     "success_rate": float(succ.mean()), "mean_max_coverage": float(cov.mean()),
                     "blocks_computed_frac": round(frac * K / 100, 4)})
        if frames and frames[0]:
            gifs[name] = frames
        if progress:
            print(f"{name}: success {succ.mean():.2f}, mean max coverage {cov.mean():.3f}")
    _write_outputs(rows, gifs, out_dir)
    return rows


def format_table(rows: list[dict]) -> str:
    return ("| method | episodes | success rate | mean max coverage | block evaluations vs "
            "DDPM-100 |\n|---|---|---|---|---|\n" + "".join(
                f"| {r['method']} | {r['episodes']} | {r['success_rate']:.2f} | "
                f"{r['mean_max_coverage']:.3f} | {100 * r['blocks_computed_frac']:.1f}% |\n"
                for r in rows))


def _write_outputs(rows, gifs, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from bac_ros.io_utils import atomic_write_text

    atomic_write_text(out_dir / "results.md", format_table(rows))
    fig, ax = plt.subplots(figsize=(8, 3))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["success_rate"] for r in rows], 0.4, label="success rate")
    ax.bar(x + 0.2, [r["mean_max_coverage"] for r in rows], 0.4, label="mean max coverage")
    ax.set_xticks(x, [r["method"] for r in rows], rotation=20, fontsize=7)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "results.png", dpi=110)
    plt.close(fig)
    for name, frames in gifs.items():
        seq = [Image.fromarray(f).resize((256, 256)) for ep in frames for f in ep[::2]]
        if seq:
            slug = name.split()[0].lower()
            seq[0].save(out_dir / f"rollouts_{slug}.gif", save_all=True,
                        append_images=seq[1:], duration=100, loop=0)
