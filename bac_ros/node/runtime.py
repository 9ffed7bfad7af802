"""PolicyRuntime: the node's ROS-free inference core (load, warm up, infer with timing)."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from bac_ros.bac.cache import ScheduledBlockCache
from bac_ros.bac.compiled import CompiledSchedule, executor
from bac_ros.bac.schedule import CacheSchedule, ScheduleError, load_schedule
from bac_ros.engine.checkpoint import load_policy
from bac_ros.node.params import NodeConfig

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ConfigureError(RuntimeError):
    """The node cannot start with this configuration; the message says why."""


class ChunkRejected(ValueError):
    """A predicted chunk must not be published (NaN/inf, or outside limits in reject mode)."""


@dataclass
class InferenceResult:
    actions: np.ndarray  # (horizon - To + 1, Da): from the newest observation's slot on
    preprocess_ms: float
    denoise_ms: float
    postprocess_ms: float
    steps: int
    blocks_computed: int
    blocks_reused: int
    bac_used: bool
    schedule_id: str = ""  # the schedule this chunk ran with ("" = full compute)
    batch_size: int = 1  # requests (robots) served by the same batched forward


@dataclass
class InferRequest:
    """One robot's chunk request: its (1, To, ...) observation, noise seed and fixed
    actions (real-time chunking; None: nothing fixed)."""

    obs: dict[str, np.ndarray]
    seed: int
    fixed: tuple[np.ndarray, np.ndarray] | None = None


class PolicyRuntime:
    def __init__(self, cfg: NodeConfig, log=print, info=None):
        self.log = log  # warnings
        self.info = info or log
        if not cfg.checkpoint:
            raise ConfigureError("parameter `checkpoint` is empty: give a .safetensors policy "
                                 "(or a diffusion_policy .ckpt with allow_pickle_checkpoint).")
        # Thread counts first: a node shares the CPU with its executor, the control timer and
        # often a driver stack; torch's default (every core) stalls under contention.
        torch.set_num_threads(cfg.effective_torch_threads)
        with contextlib.suppress(RuntimeError):  # only settable before the first parallel op
            torch.set_num_interop_threads(cfg.torch_interop_threads)
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigureError(f"device {cfg.device!r} requested but CUDA is not available "
                                 "on this machine; set device:=cpu.")
        try:
            self.policy = load_policy(cfg.checkpoint, device=self.device,
                                      allow_pickle=cfg.allow_pickle_checkpoint)
        except (ValueError, OSError) as exc:
            raise ConfigureError(str(exc)) from exc
        if cfg.num_inference_steps:
            self.policy.set_num_inference_steps(cfg.num_inference_steps)
        self.dtype = _DTYPES[cfg.dtype]
        self._allow_mismatch = cfg.bac_allow_fingerprint_mismatch
        self._swap_lock = threading.Lock()
        self.compiled = cfg.compile  # may turn False at warm-up: eager was faster, or failed
        self.compile_choice = "off (compile:=false)" if not cfg.compile else "not warmed up"
        self.max_batch = max(1, len(cfg.robots))  # robots served by one batched forward
        self.schedule: CacheSchedule | None = None
        self.cache: ScheduledBlockCache | None = None
        if cfg.schedule:
            try:
                if not cfg.num_inference_steps:  # follow the schedule's sampler and K
                    head = load_schedule(cfg.schedule)
                    self.policy.set_scheduler(head.scheduler_type, head.num_steps)
                self.schedule, self.cache = self.load_candidate(cfg.schedule)
            except ScheduleError as exc:
                if not cfg.bac_fallback_to_full:
                    raise ConfigureError(f"refusing to start with BAC: {exc} (set "
                                         "bac.fallback_to_full:=true to run full compute "
                                         "instead)") from exc
                log(f"BAC disabled, running full compute: {exc}")
        self.n_blocks = len(self.policy.model.blocks())
        # compiled full compute (None: eager)
        self.full_runner = executor(self.policy.model, None, self.policy.num_inference_steps,
                                    cfg.compile, dynamic_batch=self.max_batch > 1)

    def _cache_for(self, sched: CacheSchedule, compiled: bool | None = None):
        """The executor of ``sched``: compiled when ``compile`` is on (its graphs compile at its
        first chunk: the warm-up's or ``compile_later``'s), else, or when it has too many
        distinct masks, eager."""
        return executor(self.policy.model, sched, sched.num_steps,
                        self.compiled if compiled is None else compiled,
                        dynamic_batch=self.max_batch > 1,
                        on_eager=lambda why: self.log(f"schedule {sched.schedule_id} runs "
                                                      f"eagerly: {why}"))

    def load_candidate(self, path: str, compiled: bool | None = None
                       ) -> tuple[CacheSchedule | None, ScheduledBlockCache | None]:
        """Validate a schedule file against the running policy (fingerprint, sampler, K,
        blocks) without touching the active one. '' = full compute. Raises ScheduleError.
        ``compiled=False``: an eager executor even when the runtime compiles (a hot swap:
        see ``compile_later``)."""
        if not path:
            return None, None
        sched = load_schedule(path, policy=self.policy, allow_mismatch=self._allow_mismatch)
        return sched, self._cache_for(sched, compiled)

    def compile_later(self, sched: CacheSchedule) -> threading.Thread | None:
        """A hot-swapped schedule serves eagerly at once; when the runtime runs compiled,
        this compiles its graphs on a background thread (seconds; the inference worker must
        not stall on it) and then makes the compiled executor active, unless another
        schedule was swapped in meanwhile. Returns the thread (None: nothing to compile)."""
        if not self.compiled:
            return None

        def work():
            t = time.perf_counter()
            try:
                runner = self._cache_for(sched, compiled=True)
                if not isinstance(runner, CompiledSchedule):
                    return  # too many masks: it stays eager (logged by _cache_for)
                self._compile_graphs(runner)
            except Exception as exc:  # noqa: BLE001 - the eager executor keeps serving
                self.log(f"schedule {sched.schedule_id}: compiling failed, it stays eager: "
                         f"{str(exc)[:300]}")
                return
            with self._swap_lock:
                if self.schedule is not sched:
                    return
                self.cache = runner
            self.info(f"schedule {sched.schedule_id} compiled in "
                      f"{time.perf_counter() - t:.1f} s; now running compiled")

        thread = threading.Thread(target=work, name="bac_compile", daemon=True)
        thread.start()
        return thread

    def swap_schedule(self, candidate) -> None:
        """Make a validated candidate active. The chunk in flight keeps the schedule it started
        with (``infer`` takes both under this lock once per chunk): the swap lands between
        chunks."""
        with self._swap_lock:
            self.schedule, self.cache = candidate

    @property
    def config(self):
        return self.policy.config

    def set_steps(self, steps: int) -> None:
        steps = steps or self.policy.config.scheduler.num_inference_steps
        if steps != self.policy.num_inference_steps:
            self.policy.set_num_inference_steps(steps)

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def infer(self, obs: dict[str, np.ndarray], seed: int, use_bac: bool,
              limits: tuple[list[float], list[float]] | None = None,
              limit_mode: str = "clamp",
              fixed: tuple[np.ndarray, np.ndarray] | None = None) -> InferenceResult:
        """One chunk. Noise comes from ``seed``, exactly as ``policy.predict(obs, generator=
        torch.Generator().manual_seed(seed))`` draws it, so results are reproducible offline.
        ``fixed=(actions, mask)``: (n, Da) actions for the chunk's first n slots (from the
        newest observation on) to keep (real-time chunking). Raises ChunkRejected."""
        res = self.infer_batch([InferRequest(obs, seed, fixed)], use_bac, limits, limit_mode)[0]
        if isinstance(res, ChunkRejected):
            raise res
        return res

    @torch.no_grad()
    def infer_batch(self, requests: list[InferRequest], use_bac: bool,
                    limits: tuple[list[float], list[float]] | None = None,
                    limit_mode: str = "clamp") -> list[InferenceResult | ChunkRejected]:
        """One chunk for each request (one robot each) in one batched forward per step.

        Every request draws its noise from its own generator, so its chunk is the one
        ``infer`` gives it alone (up to the float rounding of batched matmuls). A request
        whose chunk must not be published gets a ChunkRejected in its place; the others are
        unaffected. Timings are the batch's (every robot waited for all of it)."""
        p = self.policy
        with self._swap_lock:  # one consistent (schedule, cache) per chunk
            schedule, cache = self.schedule, self.cache
        use_bac = use_bac and schedule is not None and schedule.num_steps == p.num_inference_steps
        if not use_bac:  # full compute: compiled when enabled and K still matches
            full = self.full_runner
            cache = full if full is not None and full.num_steps == p.num_inference_steps \
                else None
        t0 = time.perf_counter()
        gens = [torch.Generator().manual_seed(r.seed) for r in requests]
        obs = {k: np.concatenate([r.obs[k] for r in requests]) for k in requests[0].obs}
        with self._autocast():
            cond = p.encode_condition(obs)
            noise = torch.cat([p.make_noise(1, g) for g in gens])
            inpaint = self._inpaint([r.fixed for r in requests])
            p.synchronize()
            t1 = time.perf_counter()
            naction = p.denoise(cond, noise, cache=cache, inpaint=inpaint,
                                generator=gens[0] if len(gens) == 1 else gens)
            p.synchronize()
        t2 = time.perf_counter()
        action_pred = p.normalizer.unnormalize("action", naction.float()).cpu().numpy()
        start = p.config.n_obs_steps - 1
        checked = []
        for row in action_pred[:, start:].astype(np.float32):
            try:
                checked.append(self._checked(row, limits, limit_mode))
            except ChunkRejected as exc:
                checked.append(exc)
        post_ms = 1000 * (time.perf_counter() - t2)
        total = self.n_blocks * p.num_inference_steps
        computed = cache.computed_count if cache is not None else total
        return [a if isinstance(a, ChunkRejected) else InferenceResult(
            a, 1000 * (t1 - t0), 1000 * (t2 - t1), post_ms, p.num_inference_steps, computed,
            total - computed, use_bac, schedule.schedule_id if use_bac else "",
            batch_size=len(requests)) for a in checked]

    def _inpaint(self, fixed: list[tuple[np.ndarray, np.ndarray] | None]):
        """Per-request fixed actions -> ``denoise``'s batched ``inpaint`` (None: none fixed)."""
        if all(f is None for f in fixed):
            return None
        p = self.policy
        H, Da = p.config.horizon, p.config.shape_meta.action_dim
        start = p.config.n_obs_steps - 1
        acts, mask = np.zeros((len(fixed), H, Da), np.float32), np.zeros((len(fixed), H), bool)
        for i, f in enumerate(fixed):
            if f is not None:
                n = min(len(f[0]), H - start)
                acts[i, start:start + n], mask[i, start:start + n] = f[0][:n], f[1][:n]
        return p.inpaint_target(acts, mask)

    @staticmethod
    def _checked(actions: np.ndarray, limits, limit_mode: str) -> np.ndarray:
        if not np.isfinite(actions).all():
            raise ChunkRejected("predicted actions contain NaN/inf; chunk dropped")
        if limits and limits[0]:
            lo, hi = np.asarray(limits[0], np.float32), np.asarray(limits[1], np.float32)
            if lo.shape[0] != actions.shape[1]:
                raise ChunkRejected(f"action limits have {lo.shape[0]} dims but actions have "
                                    f"{actions.shape[1]}; fix action_min/action_max")
            outside = (actions < lo) | (actions > hi)
            if outside.any():
                if limit_mode == "reject":
                    raise ChunkRejected(f"{int(outside.sum())} action values outside the limits;"
                                        " chunk rejected (limit_mode=reject)")
                actions = np.clip(actions, lo, hi)
        return actions

    def warmup(self, iterations: int) -> list[float]:
        """Run ``iterations`` inferences at the largest batch (every robot due together: the
        node's first replanning lead comes from their milliseconds, so it is not optimistic);
        with ``compile``, first compile and keep whichever of compiled and eager is faster."""
        from bac_ros.engine.testing import random_obs

        obs = random_obs(self.policy)
        full = [InferRequest(obs, seed=i) for i in range(self.max_batch)]
        if self.compiled:
            self._compile_or_fall_back(full)
        times = []
        for _ in range(iterations):
            t = time.perf_counter()
            self.infer_batch(full, use_bac=True)
            times.append(1000 * (time.perf_counter() - t))
        return times

    def _compile_or_fall_back(self, full: list[InferRequest], rounds: int = 3) -> None:
        """Compile every graph now, never on the control path (batch 1 and the largest batch,
        schedule and full compute), then time compiled against eager chunks, alternating, and
        keep the faster: a compiler is not faster for every model and machine (on a CPU with
        tiny matrices, or where the generated code is poor), and with no working C++ compiler
        or an inductor failure the node still serves, eagerly."""
        t = time.perf_counter()
        try:
            for runner in (self.cache, self.full_runner):
                if isinstance(runner, CompiledSchedule):
                    self._compile_graphs(runner)
        except Exception as exc:  # noqa: BLE001 - eager execution does not need the compiler
            self._set_runners(*self._eager_runners())
            self.compile_choice = f"eager: compiling failed ({type(exc).__name__})"
            self.log(f"compiling the denoiser failed, running eagerly: {str(exc)[:300]} "
                     "(compile:=false skips the attempt)")
            return
        compile_s = time.perf_counter() - t
        compiled, eager = (self.cache, self.full_runner), self._eager_runners()
        ms = {"compiled": [], "eager": []}
        for _ in range(rounds):
            for name, runners in (("compiled", compiled), ("eager", eager)):
                self._set_runners(*runners)
                t = time.perf_counter()
                self.infer_batch(full, use_bac=True)
                ms[name].append(1000 * (time.perf_counter() - t))
        med = {k: float(np.median(v)) for k, v in ms.items()}
        use = "compiled" if med["compiled"] < med["eager"] else "eager"
        self._set_runners(*(compiled if use == "compiled" else eager))
        self.compile_choice = (f"{use}: chunk {med['compiled']:.1f} ms compiled vs "
                               f"{med['eager']:.1f} ms eager")
        self.info(f"compiled the denoiser in {compile_s:.1f} s; {self.compile_choice} (batch "
                 f"{len(full)}, median of {rounds}) -> running {use}")

    @torch.no_grad()
    def _compile_graphs(self, runner) -> None:
        """Compile ``runner``'s graphs (a CompiledSchedule) by running a chunk through it at
        batch 1 and at the largest batch (with several robots the second makes the batch
        size dynamic), outside ``infer_batch``: the active executors are not touched."""
        from bac_ros.engine.testing import random_obs

        p = self.policy
        with self._autocast():
            for batch in sorted({1, self.max_batch}):
                cond = p.encode_condition(random_obs(p, batch=batch))
                p.denoise(cond, p.make_noise(batch), cache=runner,
                          generator=torch.Generator().manual_seed(0))

    def _eager_runners(self):
        cache = None if self.schedule is None else self._cache_for(self.schedule, False)
        return cache, None

    def _set_runners(self, cache, full_runner) -> None:
        """Switch the active schedule's executor and full compute's (compiled or eager)."""
        with self._swap_lock:
            self.cache, self.full_runner = cache, full_runner
            self.compiled = full_runner is not None
