"""ACS, the Adaptive Caching Scheduler: exact dynamic program (BAC_NOTES.md, "ACS").

For one block with K x K similarity S_b, choose S update steps (step 0 included)
splitting 0..K-1 into S consecutive segments; segment [a, e] reuses X_b[a] and
scores sum_{t=a..e} S_b[a, t]. Maximise the total score.
"""

from __future__ import annotations

import itertools

import numpy as np


def segment_costs(sim: np.ndarray) -> np.ndarray:
    """cost[a, e] = sum_{t=a..e} S[a, t] for a <= e (-inf below the diagonal)."""
    K = sim.shape[0]
    upper = np.triu(sim)
    cost = np.cumsum(upper, axis=1)
    cost[np.tril_indices(K, -1)] = -np.inf
    return cost


def acs_schedule(sim: np.ndarray, budget: int, force_last_step: bool = False) -> list[int]:
    """Update steps C(b) (sorted, starting with 0) maximising the anchor score. O(S K^2).

    ``force_last_step`` adds K-1 afterwards, as the authors' code does (an option).
    """
    sim = np.asarray(sim, dtype=np.float64)
    K = sim.shape[0]
    if sim.shape != (K, K):
        raise ValueError(f"similarity must be square (K, K). Got {sim.shape}.")
    if not 1 <= budget <= K:
        raise ValueError(f"budget S must be in [1, K={K}]. Got {budget}.")
    cost = segment_costs(sim)
    # (1) dp[m, e]: best score covering 0..e with m segments; arg[m, e]: start of the last one.
    dp = np.full((budget + 1, K), -np.inf)
    arg = np.zeros((budget + 1, K), dtype=np.int64)
    dp[1] = cost[0]
    # (2) dp[m, e] = max_{j < e} dp[m-1, j] + cost[j+1, e]
    for m in range(2, budget + 1):
        for e in range(m - 1, K):
            cand = dp[m - 1, : e] + cost[1 : e + 1, e]  # j = 0..e-1, segment starts j+1
            j = int(np.argmax(cand))
            dp[m, e] = cand[j]
            arg[m, e] = j + 1
    # (3) backtrack segment starts from dp[S, K-1]
    starts, e = [], K - 1
    for m in range(budget, 1, -1):
        a = int(arg[m, e])
        starts.append(a)
        e = a - 1
    steps = sorted([0, *starts])
    if force_last_step and steps[-1] != K - 1:
        steps.append(K - 1)
    return steps


def schedule_score(sim: np.ndarray, steps: list[int]) -> float:
    """Anchor score of an update set (for tests and reports)."""
    K = sim.shape[0]
    bounds = [*steps, K]
    return float(sum(sim[a, a:b].sum() for a, b in zip(bounds[:-1], bounds[1:])))


def brute_force_schedule(sim: np.ndarray, budget: int) -> tuple[list[int], float]:
    """Best update set by enumeration of every subset of size S containing 0 (small K only)."""
    K = sim.shape[0]
    best, best_score = None, -np.inf
    for rest in itertools.combinations(range(1, K), budget - 1):
        steps = [0, *rest]
        score = schedule_score(sim, steps)
        if score > best_score + 1e-12:
            best, best_score = steps, score
    return best, best_score
