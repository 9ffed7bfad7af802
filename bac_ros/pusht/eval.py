"""Closed-loop Push-T evaluation: full compute vs cached schedules, paired per episode.

Episodes run in batches of ``batch_episodes`` environments stepped in lock-step; every
re-plan is ONE batched ``policy.predict``. Every method sees the same test seeds and the same
initial and step noise per (batch, chunk), so per-episode differences come from the method
alone and are analysed as paired differences (``bac_ros.stats``). The noise floor is full
compute again with another noise seed: what "no difference" looks like.

Results are saved per (method, batch) under ``out/episodes/``: a run can be stopped and
resumed, extended to more episodes, or split over processes (``--methods`` subsets into the
same ``--out``); the report is assembled from whatever is there.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bac_ros.bac.baselines import build_schedule, chunk_flops
from bac_ros.bac.capture import capture_features
from bac_ros.bac.compiled import executor
from bac_ros.bac.flops import model_flops
from bac_ros.bac.methods import MethodSpec, parse_method
from bac_ros.bac.schedule import CacheSchedule, load_schedule, save_schedule
from bac_ros.bac.similarity import caching_error, cosine_similarity_matrix
from bac_ros.io_utils import atomic_write_text
from bac_ros.pusht.env import make_env
from bac_ros.stats import paired_difference, unpaired_difference

DEFAULT_METHODS = ["full", "bac:10", "bac+last:10", "uniform:10", "acs:10", "shared_acs:10",
                   "search:10", "ddim:10"]
NOISE_FLOOR = "full#noise1"  # full compute, second noise seed


@dataclass
class EvalConfig:
    episodes: int = 50
    first_seed: int = 900_000  # test seeds, disjoint from the demonstration seeds
    max_steps: int = 300
    methods: list = field(default_factory=lambda: list(DEFAULT_METHODS))
    batch_episodes: int = 50  # environments stepped together; the resume unit
    noise_seed: int = 0
    noise_floor: bool = True
    gif_episodes: int = 1
    calib_observations: int = 32
    calib_seeds: tuple = (0, 1)  # noise seeds per calibration observation
    search_evals: int = 300
    margin: float = 0.03  # non-inferiority margin on mean max coverage
    demos: str = "data/pusht/demos.npz"  # calibration histories come from these demos
    compile: bool = False  # every method through bac.compiled (the node's default execution)

    def __post_init__(self) -> None:
        for name in ("episodes", "max_steps", "calib_observations", "batch_episodes",
                     "search_evals"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1. Got {getattr(self, name)}.")
        if not 0 <= self.gif_episodes <= min(self.episodes, self.batch_episodes):
            raise ValueError(f"`gif_episodes` must be in [0, {min(self.episodes, self.batch_episodes)}]. "
                             f"Got {self.gif_episodes}.")
        if not self.methods:
            raise ValueError("`methods` must list at least one method.")
        self.specs = [parse_method(m) for m in self.methods]
        if not any(s.method == "full" and s.sampler is None for s in self.specs):
            # The reference every row is paired with; last, so that a second process with
            # other methods finds it already saved by the first instead of racing it.
            self.specs.append(MethodSpec("full"))
        if 100_000 <= self.first_seed < 100_000 + 10_000:
            raise ValueError(f"`first_seed` {self.first_seed} overlaps the demonstration seeds "
                             "(100000+); evaluate on unseen starts.")
        if not 0 < self.margin < 1:
            raise ValueError(f"`margin` must be in (0, 1). Got {self.margin}.")

    @property
    def n_batches(self) -> int:
        return -(-self.episodes // self.batch_episodes)

    def batch_seeds(self, j: int) -> list[int]:
        lo = j * self.batch_episodes
        return [self.first_seed + i for i in range(lo, min(lo + self.batch_episodes,
                                                           self.episodes))]


def _obs_dict(hist, policy):
    """Stack per-env observation histories into the policy's (B, To, *shape) layout."""
    out = {}
    for k, spec in policy.config.shape_meta.obs.items():
        if k == "keypoints":
            out[k] = np.stack([[o["environment_state"] for o in h] for h in hist])
        elif k == "agent_pos":
            out[k] = np.stack([[o["agent_pos"] for o in h] for h in hist])
        elif spec.type == "rgb":
            out[k] = np.stack([[o["pixels"].transpose(2, 0, 1) / 255.0 for o in h]
                               for h in hist])
    return {k: v.astype(np.float32) for k, v in out.items()}


def _obs_type(policy) -> str:
    return "pixels_agent_pos" if policy.config.shape_meta.rgb_keys else \
        "environment_state_agent_pos"


def chunk_seed(noise_seed: int, batch: int, chunk: int) -> int:
    """Noise seed of one (batch, chunk): identical for every method."""
    return int(np.random.SeedSequence([noise_seed, batch, chunk]).generate_state(1)[0])


def rollout(policy, seeds: list[int], max_steps: int, cache=None, noise_seed: int = 0,
            batch: int = 0, progress: bool = True):
    """Run one batch of episodes together. Returns (success, max_coverage, actions (B, T, 2))."""
    To, Na = policy.config.n_obs_steps, policy.config.n_action_steps
    envs = [make_env(_obs_type(policy)) for _ in seeds]
    obs = [e.reset(seed=s)[0] for e, s in zip(envs, seeds)]
    hist = [[o] * To for o in obs]
    done = np.zeros(len(envs), bool)
    success = np.zeros(len(envs), bool)
    max_cov = np.zeros(len(envs))
    actions = np.full((len(envs), max_steps, 2), np.nan, np.float32)
    step, chunk = 0, 0
    bar = tqdm(total=max_steps, desc="steps", disable=not progress, leave=False)
    while step < max_steps and not done.all():
        gen = torch.Generator().manual_seed(chunk_seed(noise_seed, batch, chunk))
        pred = policy.predict(_obs_dict(hist, policy), generator=gen, cache=cache)
        chunk += 1
        for j in range(Na):
            for i, e in enumerate(envs):
                if done[i]:
                    continue
                a = pred.action[i, j].astype(np.float64)
                actions[i, step] = a
                o, _, term, _, info = e.step(a)
                hist[i] = hist[i][1:] + [o]
                max_cov[i] = max(max_cov[i], info["coverage"])
                if term:
                    done[i] = success[i] = True
            step += 1
            bar.update(1)
            if step >= max_steps:
                break
    bar.close()
    for e in envs:
        e.close()
    return success, max_cov, actions


def render_episode(seed: int, actions: np.ndarray, obs_type: str) -> list[np.ndarray]:
    """Frames of a recorded episode, re-rendered by replaying its actions. Rendering inside
    the evaluated rollout would perturb its physics (~1e-16, then chaotic growth), so the
    episodes that make GIFs would not run under the conditions of the others."""
    env = make_env(obs_type)
    env.reset(seed=seed)
    frames = [env.render()]
    for a in actions:
        if np.isnan(a).any():
            break
        env.step(a.astype(np.float64))
        frames.append(env.render())
    env.close()
    return frames


def calibration_histories(policy, cfg: EvalConfig) -> list[dict]:
    """Mid-episode observation histories from the expert demonstrations (replayed in the
    policy's observation type): one from each of the first ``calib_observations`` demos of a
    fixed permutation (``data/pusht/heldout_lowdim.npz`` excludes those demos). Initial states
    alone are a poor calibration set: the agent stands still (measured: BAC S=10 calibrated on
    4 initial states reached coverage 0.25 vs 0.58 at full compute)."""
    from bac_ros.pusht.demos import replay_observations

    d = np.load(cfg.demos)
    ends = d["episode_ends"]
    starts = np.concatenate([[0], ends[:-1]])
    picked = np.random.default_rng(0).permutation(len(ends))[:cfg.calib_observations]
    rng = np.random.default_rng(0)
    To = policy.config.n_obs_steps
    out = []
    for ep in picked:
        acts = d["actions"][starts[ep]:ends[ep]]
        obs = replay_observations(int(d["seeds"][ep]), acts, _obs_type(policy))
        t = int(rng.integers(To - 1, len(obs)))
        out.append(_obs_dict([obs[t - To + 1:t + 1]], policy))
    return out


class ScheduleFactory:
    """Builds (and caches) the schedule for a method spec from calibration histories."""

    def __init__(self, policy, cfg: EvalConfig, progress: bool = True):
        self.policy, self.cfg, self.progress = policy, cfg, progress
        self._calib: list[dict] | None = None
        self._stats: dict = {}
        self.search_logs: dict[str, dict] = {}

    @property
    def calib(self) -> list[dict]:
        if self._calib is None:
            self._calib = calibration_histories(self.policy, self.cfg)
        return self._calib

    def _similarity(self):
        key = (self.policy.config.scheduler.type, self.policy.num_inference_steps)
        if key not in self._stats:
            feats = capture_features(self.policy, self.calib, list(self.cfg.calib_seeds),
                                     progress=False)
            self._stats[key] = (np.stack([cosine_similarity_matrix(f).numpy() for f in feats]),
                                np.array([caching_error(f).item() for f in feats]))
        return self._stats[key]

    def build(self, spec: MethodSpec) -> CacheSchedule | None:
        p = self.policy
        if spec.method == "full":
            return None
        if spec.method == "file":
            sched = load_schedule(spec.path)
            p.set_scheduler(sched.scheduler_type, sched.num_steps)
            sched.check_compatible(p.fingerprint, p.num_inference_steps, p.model.blocks(),
                                   scheduler_type=p.config.scheduler.type)
            return sched
        blocks, flops = p.model.blocks(), model_flops(p.model)
        K = p.num_inference_steps
        demos = Path(self.cfg.demos)
        with_repo = demos.resolve().parts[-3:] == ("data", "pusht", demos.name)
        calib = {"source": f"{'data/pusht/' + demos.name if with_repo else demos} "
                           "(mid-episode histories)",
                 "observations": self.cfg.calib_observations,
                 "seeds": list(self.cfg.calib_seeds)}
        common = dict(blocks=blocks, K=K, fingerprint=p.fingerprint,
                      scheduler_type=p.config.scheduler.type, calibration=calib, flops=flops)
        if spec.method == "uniform":
            return build_schedule("uniform", budget=spec.budget, **common)
        sim, err = self._similarity()
        if spec.method != "search":
            return build_schedule(spec.method, budget=spec.budget, similarity=sim,
                                  caching_error=err, force_last_step=spec.force_last_step,
                                  **common)
        from bac_ros.bac.search import objective_from_observations, search_from_baselines

        objective = objective_from_observations(p, self.calib, list(self.cfg.calib_seeds))
        sched, log = search_from_baselines(
            spec.budget, {**common, "similarity": sim, "caching_error": err}, objective,
            self.cfg.search_evals, self.progress)
        self.search_logs[spec.name] = log
        return sched


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)


def _saved_schedule(policy, cfg: EvalConfig, spec: MethodSpec, path: Path):
    """The schedule a previous run of this method saved, when it was built from the same
    policy, sampler, K and calibration settings (a resumed run then skips recalibration and,
    for ``search``, the search itself; both are deterministic, so the result is the same)."""
    from bac_ros.bac.schedule import ScheduleError

    if spec.method in ("full", "file") or not path.exists():
        return None
    try:
        sched = load_schedule(path, policy=policy)
    except ScheduleError:
        return None
    cal = sched.calibration
    same = (sched.method == spec.method and sched.budget == spec.budget
            and sched.force_last_step == spec.force_last_step
            and (spec.method == "uniform" or (cal.get("observations") == cfg.calib_observations
                                              and cal.get("seeds") == list(cfg.calib_seeds))))
    return sched if same else None


def _flops_ratio_vs_full(policy, sched: CacheSchedule | None, full_steps: int) -> float:
    """FLOPs of full compute at the policy's own K / FLOPs of this method (its sampler's K)."""
    per_block, fixed = model_flops(policy.model)
    return chunk_flops(per_block, fixed, full_steps) / chunk_flops(
        per_block, fixed, policy.num_inference_steps,
        None if sched is None else sched.update_steps)


def run_method(policy, cfg: EvalConfig, spec: MethodSpec | None, out_dir: Path,
               factory: ScheduleFactory, progress: bool = True) -> dict:
    """Evaluate one method over every batch, resuming from saved batches. Returns its record."""
    own = (policy.config.scheduler.type, policy.num_inference_steps)
    floor = spec is None
    spec = spec or MethodSpec("full")
    name = NOISE_FLOOR if floor else spec.name
    try:
        if spec.sampler is not None:
            policy.set_scheduler(spec.sampler, spec.num_steps)
        sched_path = out_dir / "schedules" / f"{slug(name)}.yaml"
        sched = _saved_schedule(policy, cfg, spec, sched_path)
        if sched is None:
            sched = factory.build(spec)
            if sched is not None:
                save_schedule(sched, sched_path)
        K_used = policy.num_inference_steps
        ratio = _flops_ratio_vs_full(policy, sched, own[1])
        n_blocks = len(policy.model.blocks())
        frac = 1.0 if sched is None else sched.computed_fraction
        blocks_vs_full = frac * K_used / own[1]
        meta = {"method": name, "fingerprint": policy.fingerprint,
                "schedule_id": None if sched is None else sched.schedule_id,
                "sampler": policy.config.scheduler.type, "K": K_used,
                "first_seed": cfg.first_seed, "max_steps": cfg.max_steps,
                "batch_episodes": cfg.batch_episodes,
                "noise_seed": cfg.noise_seed + (1 if floor else 0),
                "n_action_steps": policy.config.n_action_steps}
        if cfg.compile:  # only then: records written before the option still resume
            meta["compiled"] = True
        path = out_dir / "episodes" / f"{slug(name)}.json"
        record = {"meta": meta, "batches": {}}
        if path.exists():
            old = json.loads(path.read_text())
            # Records written before n_action_steps was recorded used the policy's own (8).
            if {"n_action_steps": 8, **old.get("meta", {})} == meta:
                record = old
                record["meta"] = meta
        # as the node runs it with compile:=true (a schedule with too many distinct masks
        # runs eagerly there and here)
        cache = executor(policy.model, sched, policy.num_inference_steps, cfg.compile)
        for j in range(cfg.n_batches):
            seeds = cfg.batch_seeds(j)
            have = record["batches"].get(str(j))
            if have and len(have["coverage"]) == len(seeds):
                continue
            succ, cov, acts = rollout(policy, seeds, cfg.max_steps, cache, meta["noise_seed"],
                                      j, progress)
            record["batches"][str(j)] = {"coverage": cov.round(6).tolist(),
                                         "success": succ.astype(int).tolist()}
            if j == 0 and cfg.gif_episodes:
                record["gif_actions"] = acts[:cfg.gif_episodes].tolist()
            atomic_write_text(path, json.dumps(record))
            if progress:
                print(f"{name}: batch {j + 1}/{cfg.n_batches} mean max coverage "
                      f"{cov.mean():.3f}", flush=True)
        record["summary"] = {"blocks_computed_frac": round(blocks_vs_full, 4),
                             "flops_ratio": round(ratio, 3), "n_blocks": n_blocks,
                             "search": factory.search_logs.get(spec.name)}
        atomic_write_text(path, json.dumps(record))
        return record
    finally:
        policy.set_scheduler(*own)


def _per_episode(record: dict, cfg: EvalConfig) -> tuple[np.ndarray, np.ndarray] | None:
    cov, succ = [], []
    for j in range(cfg.n_batches):
        b = record["batches"].get(str(j))
        if not b:
            return None
        cov += b["coverage"][:len(cfg.batch_seeds(j))]
        succ += b["success"][:len(cfg.batch_seeds(j))]
    return np.array(cov), np.array(succ, float)


def summarize(records: dict[str, dict], cfg: EvalConfig) -> list[dict]:
    """Rows with paired differences to full compute (per episode)."""
    ref = _per_episode(records["full"], cfg)
    floor = _per_episode(records[NOISE_FLOOR], cfg) if NOISE_FLOOR in records else None
    # Full compute pooled over both noise seeds: the better estimate of what full compute
    # achieves when pairing buys little (per-episode correlations near 0 in closed loop).
    pooled = None if floor is None else np.concatenate([ref[0], floor[0]])
    rows = []
    order = ["full", NOISE_FLOOR] + [n for n in records if n not in ("full", NOISE_FLOOR)]
    for name in [n for n in order if n in records]:
        rec = records[name]
        per = _per_episode(rec, cfg)
        if per is None:
            continue
        cov, succ = per
        row = {"method": name, "episodes": len(cov), "success_rate": float(succ.mean()),
               "mean_max_coverage": float(cov.mean()), **rec.get("summary", {}),
               "schedule_id": rec["meta"]["schedule_id"], "per_episode_coverage": cov.tolist(),
               "per_episode_success": succ.astype(int).tolist()}
        if name != "full":
            row["paired_coverage_diff"] = paired_difference(cov, ref[0], margin=cfg.margin)
            row["paired_success_diff"] = paired_difference(succ, ref[1], margin=cfg.margin)
        if pooled is not None and name not in ("full", NOISE_FLOOR):
            row["coverage_diff_vs_pooled_full"] = unpaired_difference(cov, pooled,
                                                                      margin=cfg.margin)
        rows.append(row)
    return rows


def evaluate(policy, cfg: EvalConfig, out_dir: str | Path, progress: bool = True) -> list[dict]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    factory = ScheduleFactory(policy, cfg, progress)
    records = {}
    specs: list[MethodSpec | None] = list(cfg.specs)
    if cfg.noise_floor:
        specs.insert(specs.index(MethodSpec("full")) + 1, None)
    for spec in specs:
        rec = run_method(policy, cfg, spec, out_dir, factory, progress)
        records[rec["meta"]["method"]] = rec
    rows = summarize(records, cfg)
    _write_outputs(rows, records, policy, cfg, out_dir)
    return rows


def format_table(rows: list[dict]) -> str:
    head = ("| method | episodes | success | mean max coverage | blocks computed | FLOPs ratio | "
            "paired coverage diff vs full [95% CI] | non-inferior (paired) | "
            "diff vs full pooled over 2 noise seeds [95% CI] |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    body = ""
    for r in rows:
        d = r.get("paired_coverage_diff")
        diff = "—" if d is None else f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
        ni = "—" if d is None else ("yes" if d["noninferior"] else "no")
        u = r.get("coverage_diff_vs_pooled_full")
        pooled = "—" if u is None else \
            f"{u['mean']:+.3f} [{u['ci95'][0]:+.3f}, {u['ci95'][1]:+.3f}]"
        body += (f"| {r['method']} | {r['episodes']} | {r['success_rate']:.2f} | "
                 f"{r['mean_max_coverage']:.3f} | {100 * r.get('blocks_computed_frac', 1):.1f}% | "
                 f"{r.get('flops_ratio', 1):.2f}x | {diff} | {ni} | {pooled} |\n")
    return head + body


def _write_outputs(rows, records, policy, cfg: EvalConfig, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    atomic_write_text(out_dir / "results.md", format_table(rows))
    atomic_write_text(out_dir / "results.json", json.dumps(rows, indent=1))
    plot_pareto(rows, out_dir / "pareto.png", cfg.margin)
    obs_type = _obs_type(policy)
    for name, rec in records.items():
        acts = rec.get("gif_actions")
        if not acts or name == NOISE_FLOOR:
            continue
        seq = []
        for i, a in enumerate(acts):
            frames = render_episode(cfg.first_seed + i, np.array(a), obs_type)
            seq += [Image.fromarray(f).resize((256, 256)) for f in frames[::2]]
        if seq:
            seq[0].save(out_dir / f"rollouts_{slug(name)}.gif", save_all=True,
                        append_images=seq[1:], duration=100, loop=0)
    plt.close("all")


def plot_pareto(rows: list[dict], path: Path, margin: float) -> None:
    """Paired coverage difference vs FLOPs ratio, per method family, noise floor shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    floor = next((r for r in rows if r["method"] == NOISE_FLOOR), None)
    if floor:
        lo, hi = floor["paired_coverage_diff"]["ci95"]
        ax.axhspan(lo, hi, color="0.85", label="noise floor (full, other noise) 95% CI")
    ax.axhline(-margin, color="r", ls="--", lw=1, label=f"non-inferiority margin -{margin}")
    ax.axhline(0, color="k", lw=0.5)
    families: dict[str, list] = {}
    for r in rows:
        d = r.get("paired_coverage_diff")
        if d is None or r["method"] == NOISE_FLOOR:
            continue
        fam = r["method"].split(":")[0] if not r["method"].startswith("file:") else "bundled"
        if r["method"].startswith("ddim") or r["method"].startswith("ddpm"):
            fam = "DDIM-K (full)"
        families.setdefault(fam, []).append((r["flops_ratio"], d["mean"], *d["ci95"]))
    for fam, pts in sorted(families.items()):
        pts.sort()
        x, m, lo, hi = (np.array(v) for v in zip(*pts))
        ax.errorbar(x, m, yerr=[m - lo, hi - m], marker="o", capsize=3, label=fam, alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs ratio vs full DDPM-100 (log)")
    ax.set_ylabel("paired Δ mean max coverage vs full")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
