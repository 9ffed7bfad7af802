"""Schedule files and cached execution against a real tiny DP-T."""

import numpy as np
import pytest
import torch

from bac_ros.bac.baselines import build_schedule, uniform_steps
from bac_ros.bac.cache import ScheduledBlockCache
from bac_ros.bac.schedule import (
    ScheduleFormatError,
    ScheduleMismatchError,
    load_schedule,
    save_schedule,
)
from bac_ros.engine.testing import make_tiny_policy, random_obs


@pytest.fixture(scope="module")
def policy():
    return make_tiny_policy("lowdim", n_layer=2, num_inference_steps=20)


def _sched(policy, method="uniform", S=5):
    return build_schedule(method, policy.model.blocks(), policy.num_inference_steps, S,
                          policy.fingerprint, "ddpm")


def test_all_steps_schedule_equals_full(policy):
    """A schedule computing every block at every step reproduces full compute (<= 1e-6)."""
    obs = random_obs(policy)
    noise = policy.make_noise(1, torch.Generator().manual_seed(0))
    full = policy.predict(obs, noise=noise)
    cache = ScheduledBlockCache(_sched(policy, "full"), policy.model.blocks())
    cached = policy.predict(obs, noise=noise, cache=cache)
    assert np.abs(full.action_pred - cached.action_pred).max() <= 1e-6
    assert cached.blocks_computed == cached.blocks_total


def test_computed_counts_follow_schedule(policy):
    """Blocks actually computed == what the schedule says, and reuse happens."""
    sched = _sched(policy, "uniform", 5)
    cache = ScheduledBlockCache(sched, policy.model.blocks())
    calls = []
    policy.denoise(policy.encode_condition(random_obs(policy)),
                   policy.make_noise(1), cache=cache,
                   observer=lambda k, b, d: calls.append((k, b)))
    expected = sum(len(s) for s in sched.update_steps)
    assert len(calls) == expected == cache.computed_count
    assert {k for k, _ in calls} == set(uniform_steps(20, 5))
    assert cache.reused_count == 20 * 6 - expected


def test_cached_output_differs_but_stays_finite(policy):
    """Caching changes the output (the test can fail) and the error is reported, finite."""
    obs = random_obs(policy)
    noise = policy.make_noise(1, torch.Generator().manual_seed(1))
    full = policy.predict(obs, noise=noise).action_pred
    cache = ScheduledBlockCache(_sched(policy, "uniform", 3), policy.model.blocks())
    cached = policy.predict(obs, noise=noise, cache=cache).action_pred
    err = np.abs(full - cached).max()
    assert np.isfinite(cached).all() and err > 0


def test_roundtrip_and_validation(policy, tmp_path):
    """Saved YAML loads back identically; mismatches and damage give clear errors."""
    sched = _sched(policy)
    path = save_schedule(sched, tmp_path / "s.yaml")
    back = load_schedule(path, policy=policy)
    assert back.update_steps == sched.update_steps and back.schedule_id == sched.schedule_id

    other = make_tiny_policy("lowdim", n_layer=2, num_inference_steps=20, seed=7)
    with pytest.raises(ScheduleMismatchError, match="calibrated for model"):
        load_schedule(path, policy=other)
    assert load_schedule(path, policy=other, allow_mismatch=True).num_steps == 20
    policy.set_num_inference_steps(10)
    try:
        with pytest.raises(ScheduleMismatchError, match="K=20"):
            load_schedule(path, policy=policy)
    finally:
        policy.set_num_inference_steps(20)

    text = path.read_text()
    (tmp_path / "trunc.yaml").write_text(text[: len(text) // 3])
    with pytest.raises(ScheduleFormatError):
        load_schedule(tmp_path / "trunc.yaml")
    (tmp_path / "bad.yaml").write_text(text.replace("L0.sa: [0,", "L0.sa: [3,"))
    with pytest.raises(ScheduleFormatError, match="step 0"):
        load_schedule(tmp_path / "bad.yaml")
    (tmp_path / "range.yaml").write_text(text.replace("L1.ffn: [0,", "L1.ffn: [0, 99,"))
    with pytest.raises(ScheduleFormatError):
        load_schedule(tmp_path / "range.yaml")
    (tmp_path / "junk.yaml").write_text("{{{: not yaml")
    with pytest.raises(ScheduleFormatError, match="YAML"):
        load_schedule(tmp_path / "junk.yaml")


def test_cache_bounds_and_block_mismatch(policy):
    """set_step outside [0, K) and a schedule for other blocks are rejected."""
    sched = _sched(policy)
    cache = ScheduledBlockCache(sched, policy.model.blocks())
    with pytest.raises(IndexError, match="K=20"):
        cache.set_step(20)
    with pytest.raises(IndexError):
        cache.set_step(-1)
    with pytest.raises(ValueError, match="do not match"):
        ScheduledBlockCache(sched, policy.model.blocks()[:3])


def test_buffers_reused_across_chunks(policy):
    """static_buffers: allocated once, addresses kept across chunks (CUDA graphs); the
    default keeps references to the outputs instead, with the same actions."""
    sched = _sched(policy, "uniform", 4)
    cache = ScheduledBlockCache(sched, policy.model.blocks(), static_buffers=True)
    cond = policy.encode_condition(random_obs(policy))
    a = policy.denoise(cond, policy.make_noise(1, torch.Generator().manual_seed(1)),
                       cache=cache, generator=torch.Generator().manual_seed(2))
    ptrs = [b.data_ptr() for b in cache._buffers]
    policy.denoise(cond, policy.make_noise(1), cache=cache)
    assert [b.data_ptr() for b in cache._buffers] == ptrs
    b = policy.denoise(cond, policy.make_noise(1, torch.Generator().manual_seed(1)),
                       cache=ScheduledBlockCache(sched, policy.model.blocks()),
                       generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def test_flops_ratio_and_fraction(policy):
    """Full compute is 1.0x and 100%; fewer updates give a larger expected FLOPs ratio."""
    from bac_ros.bac.flops import model_flops

    flops = model_flops(policy.model)
    kw = dict(blocks=policy.model.blocks(), K=20, fingerprint=policy.fingerprint,
              scheduler_type="ddpm", flops=flops)
    full = build_schedule("full", budget=20, **kw)
    few = build_schedule("uniform", budget=4, **kw)
    assert full.flops_ratio == 1.0 and full.computed_fraction == 1.0
    assert few.computed_fraction == pytest.approx(4 / 20)
    assert 1.0 < few.flops_ratio < 5.0  # always-computed parts cap it below K/S


def test_ddim_schedule_and_sampler_mismatch(tmp_path):
    """DDIM-K runs through the same cache (all steps == full) and a DDPM schedule is refused."""
    p = make_tiny_policy("lowdim", n_layer=2, num_inference_steps=10)
    ddpm_path = save_schedule(_sched(p, "uniform", 4), tmp_path / "ddpm.yaml")
    p.set_scheduler("ddim", 10)
    assert p.config.scheduler.type == "ddim"
    with pytest.raises(ScheduleMismatchError, match="ddpm sampler"):
        load_schedule(ddpm_path, policy=p)
    full = build_schedule("full", p.model.blocks(), 10, 10, p.fingerprint, "ddim")
    obs, noise = random_obs(p), p.make_noise(1, torch.Generator().manual_seed(2))
    ref = p.predict(obs, noise=noise).action_pred
    out = p.predict(obs, noise=noise, cache=ScheduledBlockCache(full, p.model.blocks()))
    assert np.abs(ref - out.action_pred).max() <= 1e-6
    path = save_schedule(build_schedule("uniform", p.model.blocks(), 10, 4, p.fingerprint,
                                        "ddim"), tmp_path / "ddim.yaml")
    assert load_schedule(path, policy=p).scheduler_type == "ddim"


def test_condition_encoder_skipped_only_where_no_cross_attention_computes():
    """With a schedule, steps that reuse every cross-attention block skip the condition
    encoder; the actions are bit-identical to running it every step (nothing else reads it)."""
    from bac_ros.bac.baselines import build_schedule
    from bac_ros.bac.cache import ScheduledBlockCache
    from bac_ros.bac.interface import BlockKind
    from bac_ros.engine.testing import make_tiny_policy

    p = make_tiny_policy("image", num_inference_steps=10, scheduler="ddim")
    sched = build_schedule("uniform", p.model.blocks(), 10, 4, p.fingerprint, "ddim")
    cache = ScheduledBlockCache(sched, p.model.blocks())

    class Plain:  # the same cache without the optional computes_kind
        def __getattr__(self, name):
            if name == "computes_kind":
                raise AttributeError(name)
            return getattr(cache, name)

    calls = []
    hook = p.model.encoder.register_forward_hook(lambda *a: calls.append(1))
    obs = {k: np.random.default_rng(0).random((1, p.config.n_obs_steps, *m.shape), np.float32)
           for k, m in p.config.shape_meta.obs.items()}
    a = p.predict(obs, generator=torch.Generator().manual_seed(0), cache=cache).action_pred
    n_skipping = len(calls)
    b = p.predict(obs, generator=torch.Generator().manual_seed(0), cache=Plain()).action_pred
    hook.remove()
    np.testing.assert_array_equal(a, b)
    ca = [i for i, blk in enumerate(p.model.blocks()) if blk.kind == BlockKind.CROSS_ATTN]
    steps_with_ca = sum(any(row[i] for i in ca) for row in sched.table())
    assert n_skipping == steps_with_ca < 10 and len(calls) - n_skipping == 10
