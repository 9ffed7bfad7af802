"""Compiled execution of static schedules (bac.compiled): same actions as eager execution."""

import numpy as np
import pytest
import torch

from bac_ros.bac.baselines import build_schedule
from bac_ros.bac.cache import ScheduledBlockCache
from bac_ros.bac.compiled import CompiledSchedule
from bac_ros.bac.schedule import CacheSchedule
from bac_ros.engine.testing import make_tiny_policy, random_obs

K = 10


@pytest.fixture(scope="module")
def policy():
    return make_tiny_policy("image", num_inference_steps=K, scheduler="ddim")


def _run(policy, cache):
    cond = policy.encode_condition(random_obs(policy))
    noise = policy.make_noise(1, torch.Generator().manual_seed(3))
    with torch.no_grad():
        return policy.denoise(cond, noise, cache=cache, generator=torch.Generator().manual_seed(4))


def _random_schedule(policy, seed: int) -> CacheSchedule:
    rng = np.random.default_rng(seed)
    blocks = policy.model.blocks()
    steps = [sorted({0, *rng.choice(np.arange(1, K), rng.integers(0, K - 1), replace=False)
                     .tolist()}) for _ in blocks]
    return CacheSchedule(fingerprint=policy.fingerprint, scheduler_type="ddim", num_steps=K,
                         block_names=[b.name for b in blocks], update_steps=steps,
                         method="uniform", budget=None)


def test_compiled_full_and_uniform_match_eager(policy):
    """inductor: full compute (one graph) and a Uniform schedule (two graphs: every block,
    no block) give the eager actions within float tolerance and count the same blocks."""
    full = CompiledSchedule(policy.model, None, num_steps=K)
    assert len(full.distinct_masks) == 1
    torch.testing.assert_close(_run(policy, full), _run(policy, None), rtol=1e-4, atol=1e-5)
    assert full.computed_count == K * len(policy.model.blocks())
    sched = build_schedule("uniform", policy.model.blocks(), K, 4, policy.fingerprint, "ddim")
    comp = CompiledSchedule(policy.model, sched)
    assert len(comp.distinct_masks) == 2
    eager = ScheduledBlockCache(sched, policy.model.blocks())
    torch.testing.assert_close(_run(policy, comp), _run(policy, eager), rtol=1e-4, atol=1e-5)
    assert comp.computed_count == eager.computed_count


def test_compiled_random_schedule_matches_eager(policy):
    """A random schedule (a different mask at almost every step; traced by dynamo with the
    aot_eager backend to keep the test fast) gives the eager actions; a second chunk reuses
    the graphs and gives the same actions again."""
    sched = _random_schedule(policy, 0)
    comp = CompiledSchedule(policy.model, sched, backend="aot_eager", max_graphs=K)
    assert len(comp.distinct_masks) > 3
    eager = ScheduledBlockCache(sched, policy.model.blocks())
    a = _run(policy, comp)
    torch.testing.assert_close(a, _run(policy, eager), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_run(policy, comp), a, rtol=0, atol=0)


def test_too_many_masks_refused(policy):
    sched = _random_schedule(policy, 1)
    n = len({tuple(r) for r in sched.table()})
    with pytest.raises(ValueError, match="max_graphs"):
        CompiledSchedule(policy.model, sched, max_graphs=n - 1)
    bad = build_schedule("uniform", policy.model.blocks(), K, 4, policy.fingerprint, "ddim")
    bad.block_names = bad.block_names[::-1]
    with pytest.raises(ValueError, match="do not match"):
        CompiledSchedule(policy.model, bad)
