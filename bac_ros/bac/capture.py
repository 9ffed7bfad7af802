"""Feature capture: every block's residual delta at every step, at full compute.

Uses the model's ``observer`` argument for the duration of the call only: no
hooks stay registered, the inference path is untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from tqdm import tqdm


@torch.no_grad()
def capture_features(policy, observations: Iterable[Mapping], seeds: Iterable[int],
                     progress: bool = True) -> torch.Tensor:
    """Return features (n_blocks, N, K, D) with N = len(observations) * len(seeds).

    Each observation is one history dict shaped (1, To, *shape). Features are kept
    in float32 on the CPU (n_blocks * N * K * T * C floats: small for DP-T).
    """
    observations, seeds = list(observations), list(seeds)
    if not observations:
        raise ValueError("calibration needs at least one observation; the source was empty.")
    if not seeds:
        raise ValueError("calibration needs at least one noise seed.")
    n_blocks, K = len(policy.model.blocks()), policy.num_inference_steps
    samples: list[torch.Tensor] = []
    total = len(observations) * len(seeds)
    bar = tqdm(total=total, desc="calibration forward passes", disable=not progress)
    for obs in observations:
        cond = policy.encode_condition(obs)
        if cond.shape[0] != 1:
            raise ValueError(f"calibration observations must have batch 1; got {cond.shape[0]}.")
        for seed in seeds:
            gen = torch.Generator().manual_seed(int(seed))
            noise = policy.make_noise(1, gen)
            feats: list[list[torch.Tensor | None]] = [[None] * K for _ in range(n_blocks)]

            def observer(k, b, delta, feats=feats):
                feats[b][k] = delta[0].float().flatten().cpu()

            policy.denoise(cond, noise, observer=observer, generator=gen)
            samples.append(torch.stack([torch.stack(f) for f in feats]))  # (n_blocks, K, D)
            bar.update(1)
    bar.close()
    return torch.stack(samples, dim=1)  # (n_blocks, N, K, D)
