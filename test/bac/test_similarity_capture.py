"""Similarity/error maths against plain loops; calibration sources and their errors."""

import numpy as np
import pytest
import torch

from bac_ros.bac.calibrate import schedule_stability
from bac_ros.bac.capture import capture_features, load_observations
from bac_ros.bac.similarity import caching_error, cosine_similarity_matrix
from bac_ros.engine.testing import make_tiny_policy, random_obs


def test_similarity_and_error_match_loops():
    """Vectorised cosine matrix and L1 caching error equal the textbook double loops."""
    f = torch.randn(3, 5, 4, 7, generator=torch.Generator().manual_seed(0))  # (N, K, T, C)
    N, K = f.shape[:2]
    sim = np.zeros((K, K))
    err = 0.0
    for n in range(N):
        for i in range(K):
            for j in range(K):
                a, b = f[n, i].flatten().double(), f[n, j].flatten().double()
                sim[i, j] += float(a @ b / (a.norm() * b.norm())) / N
                if i != j:
                    err += float((a - b).abs().mean()) / (N * K * (K - 1))
    np.testing.assert_allclose(cosine_similarity_matrix(f).numpy(), sim, atol=1e-12)
    assert caching_error(f).item() == pytest.approx(err, rel=1e-12)


@pytest.fixture(scope="module")
def policy():
    return make_tiny_policy("lowdim", n_layer=2, num_inference_steps=8)


def test_capture_shapes_and_determinism(policy):
    """Features are (n_blocks, obs x seeds, K, D), identical for identical seeds."""
    obs = [random_obs(policy, seed=i) for i in range(2)]
    a = capture_features(policy, obs, [3, 4], progress=False)
    b = capture_features(policy, obs, [3, 4], progress=False)
    assert a.shape[:3] == (6, 4, 8)
    assert torch.equal(a, b)
    assert not torch.equal(a[:, 0], a[:, 1])  # another seed -> other features


def test_capture_rejects_empty_and_batched(policy):
    """An empty source or a batched observation is a clear error."""
    with pytest.raises(ValueError, match="at least one observation"):
        capture_features(policy, [], [0], progress=False)
    with pytest.raises(ValueError, match="batch 1"):
        capture_features(policy, [random_obs(policy, batch=2)], [0], progress=False)


def test_npz_source(policy, tmp_path):
    """npz observations are spread over the file; missing keys and wrong shapes are named."""
    obs = random_obs(policy, batch=10)
    np.savez(tmp_path / "o.npz", **obs)
    got = load_observations(tmp_path / "o.npz", policy, limit=3)
    key = next(iter(obs))
    assert len(got) == 3 and got[0][key].shape == (1, *obs[key].shape[1:])
    np.testing.assert_array_equal(got[-1][key][0], obs[key][9])  # last sample included
    np.savez(tmp_path / "miss.npz", other=obs[key])
    with pytest.raises(ValueError, match="missing observation arrays"):
        load_observations(tmp_path / "miss.npz", policy, limit=3)
    np.savez(tmp_path / "shape.npz", **{k: v[:, :1] for k, v in obs.items()})
    with pytest.raises(ValueError, match="per-sample shape"):
        load_observations(tmp_path / "shape.npz", policy, limit=3)
    np.savez(tmp_path / "empty.npz", **{k: v[:0] for k, v in obs.items()})
    with pytest.raises(ValueError, match="no observations"):
        load_observations(tmp_path / "empty.npz", policy, limit=3)
    with pytest.raises(FileNotFoundError):
        load_observations(tmp_path / "nope.npz", policy, limit=3)


def test_stability_reports_pairwise_jaccard(policy):
    """Stability has reference and pairwise Jaccard in [0, 1]; identical samples give 1.0."""
    obs = [random_obs(policy, seed=0)]
    feats = capture_features(policy, obs, [0, 0, 5], progress=False)
    sims = [cosine_similarity_matrix(f).numpy() for f in feats]
    from bac_ros.bac.acs import acs_schedule

    ref = [acs_schedule(s, 3) for s in sims]
    st = schedule_stability(feats, 3, False, ref)
    assert st["samples"] == 3
    for k in ("mean_jaccard", "min_jaccard", "pairwise_mean_jaccard", "pairwise_min_jaccard"):
        assert 0.0 <= st[k] <= 1.0
    same = schedule_stability(feats[:, :2], 3, False, ref)  # seed 0 twice: same features
    assert same["pairwise_min_jaccard"] == 1.0
