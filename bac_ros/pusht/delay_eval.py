"""Closed-loop Push-T with simulated inference delay: chunk hand-over modes compared.

On a robot the next chunk is computed while the current one keeps executing: a chunk
requested at control step s (from the observation at s) arrives at s + d. Until then the
stream keeps sending the current chunk's actions (holding its last one if it runs out). This
harness reproduces that asynchrony in gym-pusht, batched over episodes, for the node's
hand-over modes (``bac_ros.node.handover``):

- ``replace``: from s + d on, the new chunk's actions for those steps;
- ``temporal_ensemble``: ACT's weighted average over every chunk that has an action for the
  step (w_i = exp(-m i), i = 0 the oldest);
- ``blend``: linear cross-fade from the old chunk to the new one over ``blend_steps`` steps;
- ``rtc``: real-time chunking: the new chunk is computed with its first d actions (steps
  s .. s+d-1, which execute from the old chunk while it is computed) fixed to the old chunk's
  (inpainting), then played as ``replace``.

Same seeds and the same noise per (chunk, episode batch) for every mode, so results are paired.
Reported per mode and delay: success, mean max coverage, and the mean action jump at the step a
new chunk takes over (|a_u - a_{u-1}| in pixels) next to the mean jump within chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from bac_ros.node.handover import ActionScheduler, Chunk
from bac_ros.pusht.env import make_env
from bac_ros.pusht.eval import _obs_dict, _obs_type, chunk_seed

MODES = ("replace", "temporal_ensemble", "blend", "rtc")


@dataclass
class DelayResult:
    success: np.ndarray  # (B,) bool
    max_coverage: np.ndarray  # (B,)
    boundary_jump_px: float  # mean |a_u - a_{u-1}| at steps where a new chunk takes over
    inner_jump_px: float  # the same within chunks
    actions: np.ndarray  # (B, T, 2)


def rollout_with_delay(policy, seeds: list[int], max_steps: int, delay_steps: int,
                       mode: str, replan_every: int = 0, cache=None, noise_seed: int = 0,
                       ensemble_decay: float = 0.01, blend_steps: int = 3,
                       progress: bool = True) -> DelayResult:
    """One batch of episodes with chunks arriving ``delay_steps`` control steps late."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}. Got {mode!r}.")
    cfg = policy.config
    To, H = cfg.n_obs_steps, cfg.horizon
    every = replan_every or cfg.n_action_steps
    if not 0 <= delay_steps <= every:
        raise ValueError(f"delay_steps must be in [0, replan interval {every}] (a chunk must "
                         f"arrive before the next is requested). Got {delay_steps}.")
    B = len(seeds)
    envs = [make_env(_obs_type(policy)) for _ in seeds]
    obs = [e.reset(seed=s)[0] for e, s in zip(envs, seeds)]
    hist = [[o] * To for o in obs]
    done = np.zeros(B, bool)
    success = np.zeros(B, bool)
    max_cov = np.zeros(B)
    actions = np.full((B, max_steps, 2), np.nan, np.float32)
    # The node's own hand-over code, on a clock counted in control steps (dt = 1); a chunk's
    # actions are (n, B, 2), so one scheduler serves the whole batch of episodes.
    stream = ActionScheduler(mode, ensemble_decay, blend_steps)
    arrived = 0
    pending: tuple[int, np.ndarray] | None = None
    boundary, inner = [], []
    last = np.stack([np.asarray(o["agent_pos"], np.float32) for o in obs])
    bar = tqdm(total=max_steps, desc=f"{mode} d={delay_steps}", disable=not progress,
               leave=False)

    def arrive() -> bool:
        nonlocal pending, arrived
        if pending is None or u < pending[0] + delay_steps:
            return False
        stream.add(Chunk(pending[1], t0_s=pending[0], dt_s=1.0, chunk_id=arrived,
                         arrived_s=u))
        pending, arrived = None, arrived + 1
        return arrived > 1

    def sent(step: int) -> np.ndarray:  # what the stream sends at a step (holds without one)
        due = stream.action_at(step)
        return last if due is None else due[0]

    for u in range(max_steps):
        if done.all():
            break
        # A chunk due now arrives before the next request (delay == replan interval) and a
        # chunk requested now with no delay arrives at once.
        took_over = arrive()
        if u % every == 0:  # request a chunk from the observation at u
            fixed = None
            if mode == "rtc" and arrived and delay_steps:
                acts = np.zeros((B, H, 2), np.float32)
                mask = np.zeros((B, H), bool)
                for j in range(delay_steps):  # steps u .. u+d-1 run from the current chunk
                    acts[:, To - 1 + j] = sent(u + j)
                    mask[:, To - 1 + j] = True
                fixed = (acts, mask)
            gen = torch.Generator().manual_seed(chunk_seed(noise_seed, 0, u // every))
            with torch.no_grad():
                pred = policy.predict(_obs_dict(hist, policy), generator=gen, cache=cache,
                                      fixed_actions=fixed)
            # (n_exec, B, 2): every action from the observation's slot on
            pending = (u, pred.action_pred[:, To - 1:].transpose(1, 0, 2))
            took_over = arrive() or took_over
        a = sent(u)
        if u > 0:
            jump = np.linalg.norm(a - last, axis=-1)[~done]
            (boundary if took_over else inner).extend(jump.tolist())
        last = a
        for i, e in enumerate(envs):
            if done[i]:
                continue
            actions[i, u] = a[i]
            o, _, term, _, info = e.step(a[i].astype(np.float64))
            hist[i] = hist[i][1:] + [o]
            max_cov[i] = max(max_cov[i], info["coverage"])
            if term:
                done[i] = success[i] = True
        bar.update(1)
    bar.close()
    for e in envs:
        e.close()
    return DelayResult(success, max_cov, float(np.mean(boundary)) if boundary else 0.0,
                       float(np.mean(inner)) if inner else 0.0, actions)

