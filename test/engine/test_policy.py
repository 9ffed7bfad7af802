"""DiffusionPolicy: determinism, executed slice, bad-input errors."""

import numpy as np
import pytest
import torch

from bac_ros.engine.testing import make_tiny_policy, random_obs


@pytest.fixture(scope="module")
def policy():
    return make_tiny_policy("lowdim", num_inference_steps=10)


def test_seed_determinism(policy):
    """Same seed -> identical actions; different seed -> different actions."""
    obs = random_obs(policy)
    a = policy.predict(obs, generator=torch.Generator().manual_seed(3))
    b = policy.predict(obs, generator=torch.Generator().manual_seed(3))
    c = policy.predict(obs, generator=torch.Generator().manual_seed(4))
    np.testing.assert_array_equal(a.action, b.action)
    assert np.abs(a.action - c.action).max() > 1e-4


def test_caller_noise_determinism_and_slice(policy):
    """Caller noise alone is deterministic; action is action_pred[To-1 : To-1+Na]."""
    obs = random_obs(policy, batch=3)
    noise = torch.randn(3, 16, 2, generator=torch.Generator().manual_seed(0))
    a = policy.predict(obs, noise=noise)
    b = policy.predict(obs, noise=noise)
    np.testing.assert_array_equal(a.action_pred, b.action_pred)
    assert a.action.shape == (3, 8, 2) and a.action_pred.shape == (3, 16, 2)
    np.testing.assert_array_equal(a.action, a.action_pred[:, 1:9])
    assert a.blocks_computed == a.blocks_total == 6 * 10


def test_ddim_any_step_count():
    """DDIM runs with any number of steps."""
    p = make_tiny_policy("lowdim", scheduler="ddim", num_inference_steps=7)
    assert len(p.scheduler.timesteps) == 7
    p.set_num_inference_steps(3)
    assert p.predict(random_obs(p)).action.shape == (1, 8, 2)


@pytest.mark.parametrize("mutate, match", [
    (lambda o: o.pop("agent_pos"), "agent_pos.*missing"),
    (lambda o: o.__setitem__("agent_pos", np.zeros((1, 2, 3), np.float32)), "agent_pos.*shape"),
    (lambda o: o.__setitem__("keypoints", np.zeros((1, 16), np.float32)), "keypoints.*shape"),
    (lambda o: o["agent_pos"].__setitem__((0, 1, 0), np.nan), "NaN"),
    (lambda o: o["keypoints"].__setitem__((0, 0, 3), np.inf), "NaN or inf"),
    (lambda o: o.__setitem__("agent_pos", np.zeros((1, 2, 2), np.int64)), "float"),
    (lambda o: o.__setitem__("agent_pos", [["a", "b"], ["c", "d"]]), "agent_pos.*numeric"),
    (lambda o: o.__setitem__("keypoints", np.zeros((2, 2, 16), np.float32)), "batch"),
])
def test_bad_observations_raise_clear_errors(policy, mutate, match):
    """Wrong shapes, missing keys, NaN/inf -> ValueError naming the key."""
    obs = random_obs(policy)
    mutate(obs)
    with pytest.raises(ValueError, match=match):
        policy.predict(obs)


def test_image_policy_predicts():
    """Image policy (resnet18 + spatial softmax) predicts deterministic chunks."""
    p = make_tiny_policy("image", num_inference_steps=4)
    obs = random_obs(p)
    a = p.predict(obs, generator=torch.Generator().manual_seed(0))
    b = p.predict(obs, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(a.action, b.action)
    assert np.isfinite(a.action).all()


def test_set_scheduler_ddim_from_ddpm_keeps_fingerprint():
    """DDPM-trained policy switches to DDIM-k; fingerprint (weights + training) is kept."""
    from bac_ros.engine.checkpoint import fingerprint_policy

    p = make_tiny_policy("lowdim", num_inference_steps=10)
    fp = p.fingerprint
    p.set_scheduler("ddim", 4)
    assert type(p.scheduler).__name__ == "DDIMScheduler" and p.num_inference_steps == 4
    assert p.config.scheduler.type == "ddim" and p.config.scheduler.num_inference_steps == 4
    assert fingerprint_policy(p) == fp
    obs = random_obs(p)
    noise = p.make_noise(1, torch.Generator().manual_seed(1))
    a, b = p.predict(obs, noise=noise), p.predict(obs, noise=noise)
    np.testing.assert_array_equal(a.action, b.action)
    assert a.blocks_total == 6 * 4


def test_per_call_steps_and_observer(policy):
    """num_inference_steps is per call; denoise's observer sees every (step, block)."""
    obs = random_obs(policy)
    assert policy.predict(obs, num_inference_steps=3).blocks_total == 6 * 3
    assert policy.num_inference_steps == 10
    seen = []
    cond = policy.encode_condition(obs)
    noise = policy.make_noise(1, torch.Generator().manual_seed(0))
    policy.set_num_inference_steps(2)
    try:
        policy.denoise(cond, noise, observer=lambda k, b, d: seen.append((k, b, tuple(d.shape))))
    finally:
        policy.set_num_inference_steps(10)
    assert [(k, b) for k, b, _ in seen] == [(k, b) for k in range(2) for b in range(6)]
    assert all(s == (1, 16, 32) for _, _, s in seen)


def test_noise_shape_is_checked(policy):
    """Noise whose batch or horizon does not match the observations is refused."""
    obs = random_obs(policy, batch=2)
    with pytest.raises(ValueError, match="noise must have shape"):
        policy.predict(obs, noise=torch.zeros(1, 16, 2))


class _EveryOtherStepCache:
    """Minimal BlockCache: recompute every block on even steps, reuse on odd steps."""

    def __init__(self, reuse=True):
        self.reuse, self.store_ = reuse, {}
        self.computed_count, self.step = 0, 0

    def reset(self):
        self.store_.clear()
        self.computed_count = 0

    def set_step(self, k):
        self.step = k

    def should_compute(self, b):
        return not self.reuse or self.step % 2 == 0

    def store(self, b, delta):
        self.computed_count += 1
        self.store_[b] = delta

    def load(self, b):
        return self.store_[b]


def test_cache_path_counts_and_full_compute_equivalence(policy):
    """A compute-all cache gives bit-identical actions; reuse lowers blocks_computed."""
    from bac_ros.bac.interface import BlockCache

    obs = random_obs(policy)
    noise = policy.make_noise(1, torch.Generator().manual_seed(2))
    full = policy.predict(obs, noise=noise)
    every = _EveryOtherStepCache(reuse=False)
    assert isinstance(every, BlockCache)
    same = policy.predict(obs, noise=noise, cache=every)
    np.testing.assert_array_equal(full.action_pred, same.action_pred)
    assert same.blocks_computed == full.blocks_total == 60
    cached = policy.predict(obs, noise=noise, cache=_EveryOtherStepCache())
    assert cached.blocks_computed == 30 and cached.blocks_total == 60
    assert np.isfinite(cached.action_pred).all()
    assert np.abs(cached.action_pred - full.action_pred).max() > 0  # reuse does change numbers


def test_fixed_actions_are_kept_by_inpainting():
    """Real-time chunking: fixed slots come out as given (robot units), the free slots are
    still denoised (they differ from the given values and from the fixed ones' run without
    constraints), with and without a cache schedule; reproducible per seed; bad shapes and
    NaN refused."""
    import numpy as np
    import pytest
    import torch

    from bac_ros.bac.baselines import build_schedule
    from bac_ros.bac.cache import ScheduledBlockCache
    from bac_ros.engine.testing import make_tiny_policy, random_obs

    p = make_tiny_policy("lowdim", num_inference_steps=10, scheduler="ddpm")
    p.set_num_inference_steps(10)
    obs = random_obs(p)
    H = p.config.horizon
    fixed = np.zeros((1, H, 2), np.float32)
    mask = np.zeros((1, H), bool)
    fixed[0, 1:4] = [[100.0, 200.0], [110.0, 205.0], [120.0, 210.0]]
    mask[0, 1:4] = True
    sched = build_schedule("uniform", p.model.blocks(), 10, 4, p.fingerprint, "ddpm")
    for cache in (None, ScheduledBlockCache(sched, p.model.blocks())):
        runs = [p.predict(obs, generator=torch.Generator().manual_seed(3), cache=cache,
                          fixed_actions=(fixed, mask)) for _ in range(2)]
        np.testing.assert_allclose(runs[0].action_pred[0, 1:4], fixed[0, 1:4], atol=1e-3)
        np.testing.assert_array_equal(runs[0].action_pred, runs[1].action_pred)
        free = p.predict(obs, generator=torch.Generator().manual_seed(3), cache=cache)
        assert not np.allclose(free.action_pred[0, 1:4], fixed[0, 1:4], atol=1.0)
        assert np.isfinite(runs[0].action_pred).all()
    with pytest.raises(ValueError, match="fixed actions must be"):
        p.predict(obs, fixed_actions=(fixed[:, :4], mask[:, :4]))
    bad = fixed.copy()
    bad[0, 2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        p.predict(obs, fixed_actions=(bad, mask))
