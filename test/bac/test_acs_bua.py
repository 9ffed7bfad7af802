"""ACS dynamic program is exactly optimal; BUA unions the right sets."""

import numpy as np
import pytest

from bac_ros.bac.acs import acs_schedule, brute_force_schedule, schedule_score
from bac_ros.bac.bua import bubbling_union
from bac_ros.bac.interface import BlockInfo, BlockKind


def _random_sim(K, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(K, 6)).cumsum(0)  # drifting features, like denoising
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("K,S", [(6, 1), (6, 3), (8, 4), (9, 2), (10, 5), (10, 10)])
def test_dp_matches_brute_force(K, S, seed):
    """The DP's score equals the best of every subset of size S containing step 0."""
    sim = _random_sim(K, seed) if seed % 2 else np.random.default_rng(seed).uniform(-1, 1, (K, K))
    steps = acs_schedule(sim, S)
    _, best = brute_force_schedule(sim, S)
    assert steps[0] == 0 and len(steps) == S and steps == sorted(set(steps))
    assert schedule_score(sim, steps) == pytest.approx(best, abs=1e-9)


def test_golden_schedule():
    """Pinned result on a block-structured matrix: updates at the regime changes."""
    K = 12
    sim = np.full((K, K), 0.1)
    for a, b in [(0, 3), (3, 8), (8, 12)]:
        sim[a:b, a:b] = 1.0
    assert acs_schedule(sim, 3) == [0, 3, 8]
    assert acs_schedule(sim, 3, force_last_step=True) == [0, 3, 8, 11]


def test_budget_errors():
    """Budget outside [1, K] is rejected with the bounds named."""
    with pytest.raises(ValueError, match=r"\[1, K=4\]"):
        acs_schedule(np.eye(4), 5)


def _blocks(n_layers):
    kinds = [BlockKind.SELF_ATTN, BlockKind.CROSS_ATTN, BlockKind.FFN]
    return [BlockInfo(3 * li + i, li, k) for li in range(n_layers) for i, k in enumerate(kinds)]


def test_bua_unions_downstream_ffn_sets():
    """Selected blocks gain the FFN steps of their own and deeper layers only."""
    blocks = _blocks(3)
    sets = [[0, 10 + b] for b in range(9)]  # FFN sets: L0 [0,12], L1 [0,15], L2 [0,18]
    err = np.zeros(9)
    err[[1, 3, 8]] = [5, 4, 3]  # L0.ca, L1.sa, L2.ffn
    new, selected = bubbling_union(blocks, sets, err, top_n=3)
    assert selected == [1, 3, 8]
    assert new[1] == [0, 11, 12, 15, 18]
    assert new[3] == [0, 13, 15, 18]
    assert new[8] == [0, 18]
    assert new[0] == sets[0] and new[2] == sets[2]  # unselected and FFN sets unchanged


def test_bua_skipped_below_two():
    """As in the authors' code, BUA does nothing when fewer than 2 blocks are selected."""
    blocks = _blocks(2)
    sets = [[0, b + 1] for b in range(6)]
    new, selected = bubbling_union(blocks, sets, np.arange(6.0), top_n=1)
    assert selected == [] and new == sets
