"""Side-by-side benchmark of full compute, BAC and the baselines (no ROS)."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from bac_ros.bac.baselines import build_schedule
from bac_ros.bac.cache import ScheduledBlockCache
from bac_ros.bac.capture import capture_features
from bac_ros.bac.flops import model_flops
from bac_ros.bac.similarity import caching_error, cosine_similarity_matrix
from bac_ros.engine.testing import random_obs


@dataclass
class BenchConfig:
    ddpm_steps: int = 100
    ddim_steps: int = 10
    budget: int = 10
    ddim_budget: int = 4
    bua_top_n: int = 5
    repeats: int = 10
    warmup: int = 2
    batch: int = 1
    methods: list[str] = field(default_factory=lambda: ["full", "uniform", "shared_acs",
                                                        "acs", "bac"])
    dtype: str = "float32"
    schedule: object = None  # a CacheSchedule to time beside the calibrated methods
    heldout: list | None = None  # observations for action_rel_err (else the timed random obs)
    calibration: list | None = None  # observations to calibrate on (else one random obs)
    compile: bool = False  # also time every method compiled (bac.compiled, inductor)
    max_graphs: int = 8  # compiled methods with more distinct compute masks are skipped

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.warmup < 0 or self.batch < 1:
            raise ValueError("repeats >= 1, warmup >= 0 and batch >= 1 are required.")


def run_benchmark(policy, cfg: BenchConfig, progress: bool = True):
    device = policy.device
    dtype = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[cfg.dtype]
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda"
           else f"cpu ({platform.processor() or platform.machine()}, "
                f"{torch.get_num_threads()} threads)",
           "torch": torch.__version__, "dtype": cfg.dtype, "batch": cfg.batch,
           "policy": policy.config.name, "fingerprint": policy.fingerprint}
    blocks = policy.model.blocks()
    flops = model_flops(policy.model)
    obs = random_obs(policy, batch=cfg.batch, seed=0)
    calib_obs = cfg.calibration or [random_obs(policy, batch=1, seed=1)]
    settings = [("ddpm", cfg.ddpm_steps, cfg.budget)]
    if cfg.ddim_steps:
        settings.append(("ddim", cfg.ddim_steps, cfg.ddim_budget))
    extra = cfg.schedule
    if extra is not None and not any((k, K) == (extra.scheduler_type, extra.num_steps)
                                     for k, K, _ in settings):
        settings.append((extra.scheduler_type, extra.num_steps, cfg.budget))
    env["action_rel_err_on"] = (f"{sum(len(next(iter(o.values()))) for o in cfg.heldout)} "
                                "held-out observations" if cfg.heldout else
                                "the timed random observation")
    rows = []
    for kind, K, S in settings:
        policy.set_scheduler(kind, K)
        feats = capture_features(policy, calib_obs, [0], progress=False)
        sim = np.stack([cosine_similarity_matrix(f).numpy() for f in feats])
        err = np.array([caching_error(f).item() for f in feats])
        scheds = {m: build_schedule(m, blocks, K, min(S, K), policy.fingerprint, kind, sim, err,
                                    cfg.bua_top_n, flops=flops) for m in cfg.methods}
        if extra is not None and (extra.scheduler_type, extra.num_steps) == (kind, K):
            extra.check_compatible(policy.fingerprint, K, blocks, scheduler_type=kind)
            if extra.flops_ratio is None:
                from bac_ros.bac.baselines import flops_ratio

                extra.flops_ratio = round(flops_ratio(extra, *flops), 4)
            scheds[f"schedule {extra.schedule_id} ({extra.method} S={extra.budget})"] = extra
        caches = {m: None if m == "full" else ScheduledBlockCache(s, blocks)
                  for m, s in scheds.items()}
        backend = {m: "eager" for m in scheds}
        if cfg.compile:
            from bac_ros.bac.compiled import CompiledSchedule

            for m, s in list(scheds.items()):
                try:
                    runner = CompiledSchedule(policy.model, None if m == "full" else s, K,
                                              max_graphs=cfg.max_graphs)
                except ValueError as exc:  # too many distinct masks to compile
                    env.setdefault("not_compiled", []).append(f"{kind}-{K} {m}: {exc}")
                    continue
                scheds[f"{m} [compiled]"], caches[f"{m} [compiled]"] = s, runner
                backend[f"{m} [compiled]"] = "inductor"
        warmup_s = {}
        autocast = torch.autocast(device.type, dtype=dtype) if dtype else torch.no_grad()
        with torch.no_grad(), autocast:
            cond = policy.encode_condition(obs)
            noise = policy.make_noise(cfg.batch, torch.Generator().manual_seed(0))
            times = {m: [] for m in scheds}
            for m in scheds:  # warm-up (compiled methods compile here)
                t0 = time.perf_counter()
                for _ in range(max(1, cfg.warmup)):
                    policy.denoise(cond, noise, cache=caches[m],
                                   generator=torch.Generator().manual_seed(0))
                warmup_s[m] = time.perf_counter() - t0
            bar = tqdm(total=cfg.repeats * len(scheds), desc=f"{kind.upper()}-{K}",
                       disable=not progress)
            for _ in range(cfg.repeats):  # interleaved: machine noise hits every method alike
                for m in scheds:
                    policy.synchronize()
                    t0 = time.perf_counter()
                    policy.denoise(cond, noise, cache=caches[m],
                                   generator=torch.Generator().manual_seed(0))
                    policy.synchronize()
                    times[m].append(1000 * (time.perf_counter() - t0))
                    bar.update(1)
            bar.close()
        p50 = {m: float(np.median(t)) for m, t in times.items()}
        # full compute's p50 per backend: the reference of each row's same-backend speedup
        full_p50 = {"eager": p50.get("full"), "inductor": p50.get("full [compiled]")}
        rels, rels32 = _rel_errs(policy, cfg.heldout or [obs], scheds, caches, dtype)
        for m, s in scheds.items():
            t = np.array(times[m])
            ref = full_p50[backend[m]]
            rows.append({
                "method": m, "scheduler": kind, "steps": K, "S": s.budget,
                "chunk_ms_p50": float(np.percentile(t, 50)),
                "chunk_ms_p95": float(np.percentile(t, 95)),
                "chunk_ms_p99": float(np.percentile(t, 99)),
                "speedup_vs_full": full_p50["eager"] / p50[m] if full_p50["eager"] else None,
                # vs full compute on the same backend (compiled vs compiled, eager vs eager)
                "speedup_vs_backend_full": ref / p50[m] if ref else None,
                "backend": backend[m], "dtype": cfg.dtype,
                "warmup_s": round(warmup_s[m], 3),
                "action_rel_err": rels[m],
                # vs full compute in float32 (differs from the above for float16/bfloat16)
                "action_rel_err_vs_fp32": rels32[m],
                "blocks_computed_frac": round(s.computed_fraction, 4),
                "flops_ratio": s.flops_ratio,
                "step_ms_p50": float(np.percentile(t, 50)) / K,
            })
    return rows, env


@torch.no_grad()
def _rel_errs(policy, obs_batches: list, scheds: dict, caches: dict, dtype) -> tuple[dict, dict]:
    """||a - a_ref|| / ||a_ref|| per method on ``obs_batches`` (batched, same noise for every
    method), against full compute in the benchmark's dtype and against full compute in
    float32 (the half-precision rows' real error)."""
    import contextlib

    ctx = torch.autocast(policy.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with ctx:
        cond = torch.cat([policy.encode_condition(o) for o in obs_batches])
        noise = policy.make_noise(cond.shape[0], torch.Generator().manual_seed(123))
        run = {m: policy.denoise(cond, noise, cache=caches[m],
                                 generator=torch.Generator().manual_seed(123)).float()
               for m in scheds}
    if dtype is None and "full" in run:  # float32 already: the full row is the reference
        ref32 = run["full"]
    else:
        cond32 = torch.cat([policy.encode_condition(o) for o in obs_batches])
        ref32 = policy.denoise(cond32, noise, generator=torch.Generator().manual_seed(123))
    ref = run["full"] if "full" in run else ref32

    def rel(o, r):
        return float((o - r).norm() / r.norm().clamp_min(1e-12))

    return {m: rel(o, ref) for m, o in run.items()}, {m: rel(o, ref32) for m, o in run.items()}


def format_markdown(rows: list[dict], env: dict) -> str:
    compiled = any(r.get("backend") == "inductor" for r in rows)
    half = env.get("dtype") != "float32"
    head = (f"Device: {env['device']}; torch {env['torch']}; dtype {env['dtype']}; batch "
            f"{env['batch']}; policy {env['policy']} ({env['fingerprint']}); action rel. err "
            f"on {env['action_rel_err_on']}\n\n"
            "| scheduler | method | K | S | chunk ms p50 | p95 | p99 | speedup vs full | "
            "action rel. err | blocks computed | FLOPs ratio |" + (
                " action rel. err vs fp32 full |" if half else "") + (
                " backend | speedup vs same-backend full | warm-up s |" if compiled else "")
            + "\n|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if half else "")
            + ("---|---|---|" if compiled else "") + "\n")
    return head + "".join(
        f"| {r['scheduler'].upper()} | {r['method']} | {r['steps']} | {r['S'] or '-'} | "
        f"{r['chunk_ms_p50']:.1f} | {r['chunk_ms_p95']:.1f} | {r['chunk_ms_p99']:.1f} | "
        f"{r['speedup_vs_full']:.2f}x | {r['action_rel_err']:.4f} | "
        f"{100 * r['blocks_computed_frac']:.1f}% | {r['flops_ratio'] or 1.0:.2f}x |" + (
            f" {r['action_rel_err_vs_fp32']:.4f} |" if half else "") + (
            f" {r['backend']} | {r['speedup_vs_backend_full']:.2f}x | {r['warmup_s']:.1f} |"
            if compiled else "") + "\n"
        for r in rows)
