"""PolicyRuntime (the node's ROS-free inference core): offline agreement, action safety."""

import numpy as np
import pytest
import torch

from bac_ros.engine.testing import random_obs
from bac_ros.node.params import NodeConfig
from bac_ros.node.runtime import ChunkRejected, ConfigureError, InferRequest, PolicyRuntime


@pytest.fixture(scope="module")
def lowdim(tiny_files_factory):
    return tiny_files_factory("lowdim", 6, 3)


def test_runtime_matches_policy_predict_with_same_seed(lowdim):
    """Full compute through the runtime equals policy.predict with the same seeded generator."""
    rt = PolicyRuntime(NodeConfig(checkpoint=lowdim["checkpoint"]))
    obs = random_obs(rt.policy, seed=3)
    res = rt.infer(obs, seed=11, use_bac=False)
    pred = lowdim["policy"].predict(obs, generator=torch.Generator().manual_seed(11))
    To = rt.config.n_obs_steps
    np.testing.assert_allclose(res.actions, pred.action_pred[0, To - 1:], rtol=1e-5, atol=1e-4)
    assert res.blocks_reused == 0 and not res.bac_used


def test_runtime_bac_block_counts_follow_schedule(lowdim):
    """With a schedule, computed + reused blocks = blocks x K and computed follows the schedule."""
    rt = PolicyRuntime(NodeConfig(checkpoint=lowdim["checkpoint"], schedule=lowdim["schedule"]))
    res = rt.infer(random_obs(rt.policy), seed=0, use_bac=True)
    assert res.bac_used and res.steps == 6
    assert res.blocks_computed == sum(len(s) for s in lowdim["sched"].update_steps)
    assert res.blocks_computed + res.blocks_reused == rt.n_blocks * 6
    assert res.blocks_reused > 0


def test_nan_actions_are_rejected_never_returned(lowdim):
    """A model that produces NaN (poisoned weights) raises ChunkRejected instead of acting."""
    rt = PolicyRuntime(NodeConfig(checkpoint=lowdim["checkpoint"]))
    with torch.no_grad():
        rt.policy.model.input_emb.weight.fill_(float("nan"))
    with pytest.raises(ChunkRejected, match="NaN"):
        rt.infer(random_obs(rt.policy), seed=0, use_bac=False)


def test_action_limits_clamp_or_reject(lowdim):
    """Out-of-limit actions are clamped (clamp) or the whole chunk refused (reject)."""
    rt = PolicyRuntime(NodeConfig(checkpoint=lowdim["checkpoint"]))
    obs = random_obs(rt.policy)
    free = rt.infer(obs, seed=0, use_bac=False).actions
    mid = float(np.median(free))
    lims = ([mid, mid], [mid + 1.0, mid + 1.0])
    clamped = rt.infer(obs, seed=0, use_bac=False, limits=lims, limit_mode="clamp").actions
    assert clamped.min() >= mid and clamped.max() <= mid + 1.0
    with pytest.raises(ChunkRejected, match="limit_mode=reject"):
        rt.infer(obs, seed=0, use_bac=False, limits=lims, limit_mode="reject")


def test_missing_checkpoint_and_cuda_are_configure_errors(lowdim, tmp_path):
    """Bad configurations fail configure with a reason, not a traceback from deep inside."""
    with pytest.raises(ConfigureError, match="checkpoint"):
        PolicyRuntime(NodeConfig())
    with pytest.raises(ConfigureError):
        PolicyRuntime(NodeConfig(checkpoint=str(tmp_path / "missing.safetensors")))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigureError, match="CUDA"):
            PolicyRuntime(NodeConfig(checkpoint=lowdim["checkpoint"], device="cuda"))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_autocast_stays_close(lowdim, dtype):
    """Autocast inference gives finite float32 actions near the float32 result (same seed)."""
    obs = random_obs(lowdim["policy"], seed=1)
    ref = PolicyRuntime(NodeConfig(checkpoint=lowdim["checkpoint"])).infer(obs, 5, False)
    rt = PolicyRuntime(NodeConfig(checkpoint=lowdim["checkpoint"], dtype=dtype))
    res = rt.infer(obs, seed=5, use_bac=False)
    assert res.actions.dtype == np.float32 and np.isfinite(res.actions).all()
    # actions are in pixels ([0, 512]); reduced precision moves them by far less than 5%
    assert np.abs(res.actions - ref.actions).max() < 0.05 * 512


def test_compiled_runtime_matches_eager(lowdim):
    """compile:=true: the warm-up compiles the schedule's and full compute's graphs, and both
    give the eager actions for the same observation and seed (float tolerance)."""
    from bac_ros.bac.compiled import CompiledSchedule

    cfg = NodeConfig(checkpoint=lowdim["checkpoint"], schedule=lowdim["schedule"])
    eager = PolicyRuntime(cfg)
    # Two robots: the warm-up compiles batch 1 and a batch-dynamic graph per mask.
    comp = PolicyRuntime(cfg.replace(compile=True, robots=["a", "b"]))
    assert isinstance(comp.cache, CompiledSchedule) and comp.full_runner is not None
    comp.warmup(1)
    obs = random_obs(eager.policy, seed=5)
    for use_bac in (True, False):
        a, b = eager.infer(obs, 7, use_bac), comp.infer(obs, 7, use_bac)
        np.testing.assert_allclose(b.actions, a.actions, rtol=1e-4, atol=1e-3)
        assert (a.blocks_computed, a.bac_used) == (b.blocks_computed, b.bac_used)
        # a batch size the warm-up did not see runs the dynamic graph, same actions
        reqs = [InferRequest(random_obs(eager.policy, seed=i), seed=i) for i in range(3)]
        for req, got in zip(reqs, comp.infer_batch(reqs, use_bac)):
            want = eager.infer(req.obs, req.seed, use_bac)
            np.testing.assert_allclose(got.actions, want.actions, rtol=1e-4, atol=1e-3)


def test_batched_requests_equal_each_alone(lowdim):
    """infer_batch (several robots in one forward) gives every request the chunk `infer`
    gives it alone: own observation, own noise seed, own fixed actions; with a schedule and
    with full compute, and a rejected row does not take the others with it."""
    rt = PolicyRuntime(NodeConfig(checkpoint=lowdim["checkpoint"], schedule=lowdim["schedule"],
                                  robots=["a", "b", "c"]))
    assert rt.max_batch == 3
    Da = rt.config.shape_meta.action_dim
    fixed = (np.full((2, Da), 100.0, np.float32), np.array([True, True]))
    reqs = [InferRequest(random_obs(rt.policy, seed=i), seed=10 + i) for i in range(3)]
    reqs[1].fixed = fixed  # real-time chunking for one robot only
    for use_bac in (True, False):
        batch = rt.infer_batch(reqs, use_bac=use_bac)
        for req, got in zip(reqs, batch):
            alone = rt.infer(req.obs, req.seed, use_bac, fixed=req.fixed)
            np.testing.assert_allclose(got.actions, alone.actions, rtol=1e-5, atol=1e-4)
            assert got.batch_size == 3 and alone.batch_size == 1
            assert (got.blocks_computed, got.bac_used) == (alone.blocks_computed, use_bac)
        np.testing.assert_allclose(batch[1].actions[:2], fixed[0], atol=1e-3)
        # different robots, different chunks (own noise and observation)
        assert np.abs(batch[0].actions - batch[2].actions).max() > 1e-3
    # Robot b's fixed actions lie outside the limits: its chunk alone is rejected.
    reqs[1].fixed = (np.full((2, Da), -1000.0, np.float32), np.array([True, True]))
    limits = ([-500.0] * Da, [5000.0] * Da)
    out = rt.infer_batch(reqs, use_bac=True, limits=limits, limit_mode="reject")
    assert isinstance(out[1], ChunkRejected) and "outside the limits" in str(out[1])
    for i in (0, 2):
        alone = rt.infer(reqs[i].obs, reqs[i].seed, True, limits=limits, limit_mode="reject")
        np.testing.assert_allclose(out[i].actions, alone.actions, rtol=1e-5, atol=1e-4)


def test_compile_keeps_the_faster_and_survives_a_missing_compiler(lowdim):
    """compile:=true (the default) times compiled against eager chunks at warm-up and keeps the
    faster (both numbers in compile_choice); with no working C++ compiler it runs eagerly
    instead of failing to start."""
    import torch._inductor.config as inductor_config

    from bac_ros.bac.compiled import CompiledSchedule

    cfg = NodeConfig(checkpoint=lowdim["checkpoint"], schedule=lowdim["schedule"])
    assert cfg.compile  # the default
    rt = PolicyRuntime(cfg)
    rt.warmup(1)
    choice = rt.compile_choice
    assert choice.startswith(("compiled:", "eager:")) and "ms compiled vs" in choice, choice
    assert rt.compiled == choice.startswith("compiled:")
    assert isinstance(rt.cache, CompiledSchedule) == rt.compiled
    assert rt.infer(random_obs(rt.policy), 3, True).bac_used

    torch._dynamo.reset()  # nothing compiled may be reused: the compiler must run
    with inductor_config.patch({"cpp.cxx": ("/nonexistent/g++",), "fx_graph_cache": False}):
        broken = PolicyRuntime(cfg)
        logs = []
        broken.log = logs.append
        broken.warmup(1)
    assert broken.compile_choice.startswith("eager: compiling failed"), broken.compile_choice
    assert not broken.compiled and broken.full_runner is None
    assert any("running eagerly" in m for m in logs), logs
    ref = PolicyRuntime(cfg.replace(compile=False))
    obs = random_obs(ref.policy, seed=2)
    np.testing.assert_allclose(broken.infer(obs, 4, True).actions, ref.infer(obs, 4, True).actions,
                               rtol=1e-6, atol=1e-5)
    torch._dynamo.reset()


def test_hot_swapped_schedule_serves_eagerly_then_compiled(lowdim, tmp_path):
    """A schedule swapped in at runtime serves eagerly at once (nothing compiles on the
    control path) and is compiled on a background thread, then swapped to the compiled
    executor: same actions, the same schedule."""
    from bac_ros.bac.baselines import build_schedule
    from bac_ros.bac.cache import ScheduledBlockCache
    from bac_ros.bac.compiled import CompiledSchedule
    from bac_ros.bac.schedule import save_schedule

    rt = PolicyRuntime(NodeConfig(checkpoint=lowdim["checkpoint"], schedule=lowdim["schedule"]))
    rt.warmup(0)
    rt.compiled = True  # as if compiled won the warm-up's timing (it may not on a tiny model)
    p = rt.policy
    new = build_schedule("uniform", p.model.blocks(), p.num_inference_steps, 2, p.fingerprint,
                         p.config.scheduler.type)
    staged = rt.load_candidate(str(save_schedule(new, tmp_path / "new.yaml")), compiled=False)
    assert isinstance(staged[1], ScheduledBlockCache)
    rt.swap_schedule(staged)
    obs = random_obs(p, seed=4)
    eager = rt.infer(obs, 9, True)
    assert eager.schedule_id == new.schedule_id
    rt.compile_later(staged[0]).join(timeout=120)
    assert isinstance(rt.cache, CompiledSchedule) and rt.schedule is staged[0]
    compiled = rt.infer(obs, 9, True)
    np.testing.assert_allclose(compiled.actions, eager.actions, rtol=1e-4, atol=1e-3)
    assert compiled.blocks_computed == eager.blocks_computed
