"""Expert demonstrations for Push-T: generated deterministically, stored compactly.

Stores seeds + commanded actions (+ the low-dim observations seen, for convenience); images
are re-rendered by replaying a seed's actions (replay is bit-exact in gym-pusht).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np

from bac_ros.io_utils import atomic_write_bytes
from bac_ros.pusht.env import make_env
from bac_ros.pusht.expert import run_episode


def _worker(seed: int):
    t = time.perf_counter()
    ok, cov, actions = run_episode(seed)
    return seed, ok, cov, actions, time.perf_counter() - t


def replay_observations(seed: int, actions: np.ndarray, obs_type: str):
    """Observations seen before each action, by replaying the demo in a fresh env."""
    env = make_env(obs_type)
    obs, _ = env.reset(seed=seed)
    out = []
    for a in actions:
        out.append(obs)
        obs, *_ = env.step(np.asarray(a, dtype=np.float64))
    env.close()
    return out


def generate(n: int, out: Path, first_seed: int = 100_000, workers: int = 2) -> dict:
    """Run the expert on consecutive seeds until ``n`` successes; keep successes only."""
    seeds, actions, lowdim, attempts = [], [], [], []
    with mp.get_context("fork").Pool(workers) as pool:
        seed = first_seed
        while len(seeds) < n:
            batch = list(range(seed, seed + workers * 8))
            seed += len(batch)
            for s, ok, cov, act, dt in pool.imap(_worker, batch):
                attempts.append((s, ok, cov, len(act), dt))
                if ok and len(seeds) < n:
                    seeds.append(s)
                    actions.append(act)
            print(f"  {len(seeds)}/{n} demonstrations ({len(attempts)} attempts)", flush=True)
    for s, act in zip(seeds, actions):
        obs = replay_observations(s, act, "environment_state_agent_pos")
        lowdim.append(np.array([np.concatenate([o["environment_state"], o["agent_pos"]])
                                for o in obs], dtype=np.float32))
    ep_len = np.array([len(a) for a in actions])
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, seeds=np.array(seeds), episode_ends=np.cumsum(ep_len),
                        actions=np.concatenate(actions), obs_lowdim=np.concatenate(lowdim))
    atomic_write_bytes(out, buf.getvalue())
    att = np.array([(ok, cov, n_, dt) for _, ok, cov, n_, dt in attempts], dtype=np.float64)
    return {"demonstrations": len(seeds), "attempts": len(attempts),
            "expert_success_rate": float(att[:, 0].mean()),
            "expert_mean_max_coverage": float(att[:, 1].mean()),
            "mean_episode_steps": float(ep_len.mean()), "mean_seconds_per_episode":
            float(att[:, 3].mean()), "first_seed": first_seed, "file": str(out)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Generate Push-T expert demonstrations.")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--out", default="data/pusht/demos.npz")
    ap.add_argument("--first-seed", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    import json

    print(json.dumps(generate(a.n, Path(a.out), a.first_seed, a.workers), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def calibration_episodes(n_episodes: int, n: int = 16, seed: int = 0) -> np.ndarray:
    """The demo episodes `write_calibration_npz(seed=seed)` draws its histories from."""
    return np.random.default_rng(seed).choice(n_episodes, size=n, replace=n_episodes < n)


def write_calibration_npz(demos_path: str | Path, out: str | Path, n: int = 16,
                          n_obs_steps: int = 2, seed: int = 0,
                          exclude_episodes=()) -> Path:
    """Observation histories from the demonstrations for `bac calibrate --source X.npz`.

    ``exclude_episodes``: demo episodes to leave out (e.g. the calibration set's, to write a
    held-out set for fidelity measurements)."""
    import io

    d = np.load(demos_path)
    ends = d["episode_ends"]
    starts = np.concatenate([[0], ends[:-1]])
    rng = np.random.default_rng(seed)
    kp, ag = [], []
    if len(exclude_episodes):
        allowed = np.setdiff1d(np.arange(len(ends)), np.asarray(exclude_episodes))
        episodes = rng.choice(allowed, size=n, replace=len(allowed) < n)
    else:
        episodes = rng.choice(len(ends), size=n, replace=len(ends) < n)
    for ep in episodes:
        t = int(rng.integers(starts[ep] + n_obs_steps - 1, ends[ep]))
        window = d["obs_lowdim"][t - n_obs_steps + 1:t + 1]
        kp.append(window[:, :16])
        ag.append(window[:, 16:18])
    buf = io.BytesIO()
    np.savez(buf, keypoints=np.stack(kp), agent_pos=np.stack(ag))
    return atomic_write_bytes(out, buf.getvalue())
