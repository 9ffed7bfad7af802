"""Push-T: expert solves episodes, demos load as padded training windows, training runs and
resumes, closed-loop eval pipeline works, the bag is what the node expects."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from bac_ros.engine.checkpoint import load_policy, save_policy
from bac_ros.engine.testing import make_tiny_policy

ROOT = Path(__file__).resolve().parents[2]
DEMOS = ROOT / "data" / "pusht" / "demos.npz"


def test_expert_solves_random_starts():
    """The simulated push-primitive expert reaches coverage > 0.95 from random starts."""
    from bac_ros.pusht.expert import run_episode

    results = [run_episode(seed) for seed in (1, 2)]
    assert all(ok for ok, _, _ in results), [c for _, c, _ in results]
    assert all(0 < len(a) <= 300 for _, _, a in results)


def test_demo_replay_is_exact():
    """Replaying a stored demo's actions reproduces its stored observations bit for bit."""
    from bac_ros.pusht.demos import replay_observations

    d = np.load(DEMOS)
    assert len(d["seeds"]) >= 200
    end0 = d["episode_ends"][0]
    obs = replay_observations(int(d["seeds"][0]), d["actions"][:end0],
                              "environment_state_agent_pos")
    got = np.array([np.concatenate([o["environment_state"], o["agent_pos"]]) for o in obs])
    np.testing.assert_array_equal(got.astype(np.float32), d["obs_lowdim"][:end0])


def test_dataset_padding():
    """Windows follow diffusion_policy's SequenceSampler padding (edge frames repeated)."""
    from bac_ros.pusht.train import LowDimSequences

    ds = LowDimSequences(str(DEMOS), horizon=16, n_obs_steps=2, n_action_steps=8)
    first = ds[0]
    assert first["obs"]["keypoints"].shape == (16, 16) and first["action"].shape == (16, 2)
    np.testing.assert_array_equal(first["action"][0], first["action"][1])  # pad_before = 1
    ep_len = int(np.load(DEMOS)["episode_ends"][0])
    assert sum(1 for i, s, e in ds.index if s == 0) == ep_len - 16 + 1 + 1 + 7


def test_learning_curve_points(tmp_path):
    """`bac train --eval-every N`: closed-loop coverage of the EMA policy next to the loss."""
    import json

    from bac_ros.pusht.train import TrainConfig, train

    cfg = TrainConfig(demos=str(DEMOS), out=str(tmp_path), n_layer=1, n_emb=16, batch_size=16,
                      num_steps=4, warmup_steps=1, checkpoint_every=4, eval_every=2,
                      eval_episodes=2)
    train(cfg, progress=False)
    curve = json.loads((tmp_path / "learning_curve.json").read_text())
    assert [c["step"] for c in curve] == [2, 4]
    assert all(0 <= c["mean_max_coverage"] <= 1 and c["episodes"] == 2 for c in curve)
    assert (tmp_path / "learning_curve.png").exists()


def test_train_few_steps_and_resume(tmp_path):
    """Loss is finite and falls over the first 30 steps; resume continues the step count; outputs load."""
    from bac_ros.pusht.train import TrainConfig, train

    cfg = TrainConfig(demos=str(DEMOS), out=str(tmp_path), n_layer=2, n_emb=32,
                      batch_size=32, num_steps=30, warmup_steps=5, checkpoint_every=15)
    s1 = train(cfg, progress=False)
    assert s1["steps"] == 30 and np.isfinite(s1["final_loss"])
    import torch

    losses = torch.load(tmp_path / "train_state.pt", weights_only=False)["losses"]
    assert np.mean(losses[-10:]) < 0.9 * np.mean(losses[:10]), losses  # it learns (seeded run)
    cfg.num_steps = 40
    s2 = train(cfg, progress=False)
    assert s2["steps"] == 40
    p = load_policy(tmp_path / "policy.safetensors")
    q = load_policy(tmp_path / "policy.ckpt", allow_pickle=True)
    assert p.config.name == "pusht_lowdim_dpt" and (tmp_path / "loss.png").exists()
    assert set(q.state_dict()) == set(p.state_dict())


def _bac_eval_json(ckpt, *args, timeout=600) -> list[dict]:
    """Run the real `bac eval ... --json` and return its rows."""
    out = subprocess.run([sys.executable, "-m", "bac_ros.cli.main", "eval", str(ckpt),
                          *args, "--json"], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout[out.stdout.index("["):])


def test_eval_pipeline_paired_and_resumable(tmp_path):
    """`bac eval` with method specs on a tiny policy: every row paired with full compute,
    the noise floor present, per-episode values in the JSON, and a second run resumes from
    the saved batches (same numbers, nothing recomputed)."""
    p = make_tiny_policy("lowdim", num_inference_steps=4, scheduler="ddim")
    ckpt = save_policy(p, tmp_path / "p.safetensors")
    args = ("--episodes", "3", "--batch-episodes", "2", "--max-steps", "16", "--methods",
            "full", "uniform:2", "bac+last:2", "search:2", "--search-evals", "6",
            "--calib-observations", "2", "--gif-episodes", "1", "--out", str(tmp_path / "ev"))
    rows = _bac_eval_json(ckpt, *args)
    by = {r["method"]: r for r in rows}
    assert list(by) == ["full", "full#noise1", "uniform:2", "bac+last:2", "search:2"]
    for name, r in by.items():
        assert r["episodes"] == 3 and len(r["per_episode_coverage"]) == 3
        if name != "full":
            d = r["paired_coverage_diff"]
            diffs = np.subtract(r["per_episode_coverage"], by["full"]["per_episode_coverage"])
            assert d["n"] == 3 and np.isclose(d["mean"], diffs.mean())
            assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
    assert by["search:2"]["blocks_computed_frac"] <= by["uniform:2"]["blocks_computed_frac"] + 1e-9
    out = tmp_path / "ev"
    assert {"results.md", "results.json", "pareto.png", "rollouts_full.gif"} <= \
        {f.name for f in out.iterdir()}
    assert (out / "schedules" / "search_2.yaml").exists()
    stamp = (out / "episodes" / "full.json").stat().st_mtime_ns
    again = _bac_eval_json(ckpt, *args)
    assert [r["per_episode_coverage"] for r in again] == [r["per_episode_coverage"] for r in rows]
    assert (out / "episodes" / "full.json").stat().st_mtime_ns >= stamp


def test_eval_bundled_policy_short(tmp_path):
    """The committed results' command on the bundled policy, short: 2 episodes, 40 steps,
    DDIM-10 and the bundled schedule file; runs end to end on the real trained weights."""
    ckpt = ROOT / "data" / "policies" / "pusht_lowdim.safetensors"
    sched = ROOT / "data" / "policies" / "pusht_lowdim.schedule.yaml"
    rows = _bac_eval_json(ckpt, "--episodes", "2", "--max-steps", "40", "--methods", "ddim:10",
                          f"file:{sched}", "--no-noise-floor", "--gif-episodes", "1",
                          "--out", str(tmp_path / "ev"), timeout=900)
    assert [r["method"] for r in rows] == ["full", "ddim:10", f"file:{sched}"]
    assert all(r["episodes"] == 2 and 0 <= r["mean_max_coverage"] <= 1 for r in rows)
    assert rows[2]["blocks_computed_frac"] < rows[0]["blocks_computed_frac"]
    assert rows[2]["flops_ratio"] > 2


def test_bundled_bag_topics_and_rates():
    """The bag holds rgb8 96x96 frames at 10 Hz and agent joint states at 100 Hz."""
    from bac_ros.node.replay import read_bag

    msgs = read_bag(ROOT / "data" / "pusht" / "pusht_rollout")
    by = {}
    for t, topic, typ, _ in msgs:
        by.setdefault((topic, typ), []).append(t)
    cam = by[("/camera/image_raw", "sensor_msgs/msg/Image")]
    js = by[("/joint_states", "sensor_msgs/msg/JointState")]
    assert abs(1e9 / np.median(np.diff(cam)) - 10) < 0.5
    assert abs(1e9 / np.median(np.diff(js)) - 100) < 5


def test_train_image_policy_few_steps(tmp_path):
    """`obs=image`: demo frames are re-rendered (agent positions checked against the stored
    states) and cached; a ResNet18 DP-T trains, saves and reloads with an rgb camera key."""
    from bac_ros.pusht.train import TrainConfig, render_frames, train

    cfg = TrainConfig(demos=str(DEMOS), out=str(tmp_path / "img"), obs="image",
                      frames_cache=str(tmp_path / "frames.npz"), max_episodes=2, n_layer=2,
                      n_emb=32, batch_size=8, num_steps=3, warmup_steps=1, checkpoint_every=3)
    assert cfg.horizon == 10  # diffusion_policy's image Push-T horizon
    s = train(cfg, progress=False)
    assert s["steps"] == 3 and np.isfinite(s["final_loss"])
    frames = render_frames(str(DEMOS), cfg.frames_cache, 2, progress=False)  # from the cache
    ends = np.load(DEMOS)["episode_ends"]
    assert frames.shape == (ends[1], 96, 96, 3) and frames.dtype == np.uint8
    p = load_policy(tmp_path / "img" / "policy.safetensors")
    assert p.config.shape_meta.rgb_keys == ["image"] and p.config.horizon == 10
    assert p.config.obs_encoder.crop_shape == (84, 84)
    q = load_policy(tmp_path / "img" / "policy.ckpt", allow_pickle=True)
    assert q.fingerprint == p.fingerprint


def test_conv_image_policy_from_lowdim(tmp_path):
    """`--obs image --encoder conv --init-from LOWDIM`: the small encoder is pre-trained to
    regress the T keypoints (its loss falls; held-out pixel error reported), the transformer
    and normalizers are the low-dim policy's, then the denoiser fine-tunes with the encoder
    frozen; the result saves, reloads and predicts from a camera frame."""
    import torch

    from bac_ros.pusht.train import TrainConfig, train

    low = make_tiny_policy("lowdim", n_layer=2, n_emb=32)
    save_policy(low, tmp_path / "low.safetensors")
    cfg = TrainConfig(demos=str(DEMOS), out=str(tmp_path / "img"), obs="image", encoder="conv",
                      init_from=str(tmp_path / "low.safetensors"), encoder_steps=40,
                      num_steps=0, frames_cache=str(tmp_path / "frames.npz"), max_episodes=3,
                      horizon=16, n_layer=2, n_emb=32, batch_size=8, warmup_steps=1)
    s = train(cfg, progress=False)
    enc = s["encoder"]
    assert enc["final_loss"] < enc["initial_loss"] and enc["heldout_keypoint_error_px_mean"] > 0
    p = load_policy(tmp_path / "img" / "policy.safetensors")
    assert p.config.obs_encoder.backbone == "conv" and p.config.obs_encoder.crop_shape is None
    for k, v in low.model.state_dict().items():
        assert torch.equal(p.model.state_dict()[k], v), k
    assert torch.equal(p.normalizer.params_dict["action"]["scale"],
                       low.normalizer.params_dict["action"]["scale"])
    frozen = {k: v.clone() for k, v in p.obs_encoder.state_dict().items()}
    cfg.num_steps = 3  # resume: the pre-trained encoder is reused, the denoiser trains
    s2 = train(cfg, progress=False)
    assert s2["steps"] == 3 and np.isfinite(s2["final_loss"]) and s2["encoder"] == enc
    q = load_policy(tmp_path / "img" / "policy.safetensors")
    for k, v in frozen.items():
        assert torch.equal(q.obs_encoder.state_dict()[k], v), k
    assert not torch.equal(q.model.state_dict()["head.weight"], low.model.state_dict()["head.weight"])
    obs = {"image": np.random.default_rng(0).random((1, 2, 3, 96, 96), dtype=np.float32),
           "agent_pos": np.full((1, 2, 2), 256.0, np.float32)}
    out = q.predict(obs, generator=torch.Generator().manual_seed(0))
    assert out.action.shape == (1, 8, 2) and np.isfinite(out.action).all()


def test_handover_modes_under_delay(tmp_path):
    """`bac handover`: every mode runs with simulated inference delay (chunks arrive late, the
    current one keeps executing), rows are paired against replace, results resume from --out;
    rtc's fixed slots make the new chunk continue the old one, so its jump at hand-over is
    below replace's on the same episodes."""
    ckpt = ROOT / "data" / "policies" / "pusht_lowdim.safetensors"
    sched = ROOT / "data" / "policies" / "pusht_lowdim.schedule.yaml"
    cmd = [sys.executable, "-m", "bac_ros.cli.main", "handover", str(ckpt), "--schedule",
           str(sched), "--episodes", "2", "--max-steps", "24", "--delays", "0", "3",
           "--out", str(tmp_path / "h"), "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout)
    assert {(x["mode"], x["delay_steps"]) for x in rows} == {
        (m, d) for m in ("replace", "temporal_ensemble", "blend", "rtc") for d in (0, 3)}
    by = {(x["mode"], x["delay_steps"]): x for x in rows}
    assert by[("rtc", 0)]["mean_max_coverage"] == by[("replace", 0)]["mean_max_coverage"]
    assert "diff_vs_replace_ci95" in by[("rtc", 3)]
    assert by[("rtc", 3)]["boundary_jump_px"] < by[("replace", 3)]["boundary_jump_px"]
    assert len(list((tmp_path / "h").glob("*_b0.json"))) == 8
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # all resumed
    assert json.loads(again.stdout) == rows


def test_delay_equal_to_the_replan_interval_still_delivers_chunks():
    """A chunk due at the step the next one is requested arrives first (it is not dropped):
    with delay == replan interval the agent still follows the policy."""
    from bac_ros.pusht.delay_eval import rollout_with_delay

    policy = make_tiny_policy("lowdim", num_inference_steps=2, scheduler="ddim")
    r = rollout_with_delay(policy, [900_000], 20, delay_steps=4, mode="replace",
                           replan_every=4, progress=False)
    acts = r.actions[0, :20]
    start = acts[0]
    assert np.isfinite(acts).all() and np.abs(acts[4:] - start).max() > 1.0
    assert r.boundary_jump_px > 0
