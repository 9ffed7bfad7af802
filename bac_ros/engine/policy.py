"""DiffusionPolicy: observation history -> condition -> denoising loop -> actions.

Matches diffusion_policy's transformer policies with ``obs_as_cond``: the
observation features of the first ``n_obs_steps`` frames become the
cross-attention condition, the loop is diffusers-style (caller-owned), and the
executed slice is ``To-1 .. To-1+n_action_steps`` of the predicted horizon.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from bac_ros.bac.interface import BlockCache
from bac_ros.engine.config import PolicyConfig
from bac_ros.engine.encoders import ObservationEncoder
from bac_ros.engine.model import TransformerForDiffusion
from bac_ros.engine.normalizer import LinearNormalizer
from bac_ros.engine.schedulers import FastDDPMStep, build_scheduler

# observer(step_index, block_index, delta): records block features for calibration.
StepObserver = "Callable[[int, int, torch.Tensor], None]"


@dataclass
class ActionPrediction:
    action: np.ndarray  # (B, n_action_steps, Da) executed slice, unnormalized
    action_pred: np.ndarray  # (B, horizon, Da) full predicted horizon, unnormalized
    blocks_computed: int  # block evaluations in this chunk (all steps, one sample)
    blocks_total: int  # blocks x steps at full compute


class DiffusionPolicy(nn.Module):
    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        tcfg = config.transformer
        self.obs_encoder = ObservationEncoder(config.shape_meta, config.obs_encoder)
        if tcfg.obs_as_cond and tcfg.cond_dim != self.obs_encoder.output_dim:
            raise ValueError(
                f"transformer.cond_dim ({tcfg.cond_dim}) != observation feature size "
                f"({self.obs_encoder.output_dim}) implied by shape_meta / obs_encoder."
            )
        if not tcfg.obs_as_cond:
            raise ValueError(
                "only obs_as_cond policies are supported by the policy wrapper (the observation "
                "must enter through the condition); inpainting-style DP-T checkpoints can be "
                "loaded as a bare TransformerForDiffusion."
            )
        self.model = TransformerForDiffusion(tcfg)
        self.normalizer = LinearNormalizer()
        self.scheduler = build_scheduler(config.scheduler)
        self.fingerprint: str = ""  # set by checkpoint loading / fingerprint_policy
        self.eval()

    # -- configuration --------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.head.weight.device

    @property
    def num_inference_steps(self) -> int:
        return int(self.scheduler.num_inference_steps)

    def synchronize(self) -> None:
        """Wait for queued GPU work (before reading a clock); a no-op on the CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def set_num_inference_steps(self, k: int) -> None:
        """Denoising steps per chunk (K); the config follows so a saved policy keeps it."""
        if not isinstance(k, int) or not 1 <= k <= self.config.scheduler.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in [1, {self.config.scheduler.num_train_timesteps}]"
                f". Got {k!r}."
            )
        self.scheduler.set_timesteps(k)
        self.config.scheduler = dataclasses.replace(self.config.scheduler, num_inference_steps=k)

    def set_scheduler(self, kind: str, num_inference_steps: Optional[int] = None) -> None:
        """Switch sampler ("ddpm" | "ddim") keeping the trained noise schedule, e.g. DDIM-10.

        The fingerprint does not change on purpose: it identifies the weights and the
        training schedule; BAC schedules carry their own K and scheduler checks.
        """
        steps = num_inference_steps or self.config.scheduler.num_inference_steps
        cfg = dataclasses.replace(self.config.scheduler, type=kind, num_inference_steps=steps)
        self.scheduler = build_scheduler(cfg)
        self.config.scheduler = cfg

    # -- inference ------------------------------------------------------------------------
    def validate_obs(self, obs: Mapping[str, object]) -> dict[str, torch.Tensor]:
        """Check keys, shapes and finiteness; return float tensors on the policy device."""
        if not isinstance(obs, Mapping):
            raise TypeError(f"obs must be a dict of arrays. Got {type(obs).__name__}.")
        To = self.config.n_obs_steps
        out, batch = {}, None
        for key, spec in self.config.shape_meta.obs.items():
            if key not in obs:
                raise ValueError(
                    f"observation key {key!r} is missing; the policy needs "
                    f"{list(self.config.shape_meta.obs)}."
                )
            want = (To, *spec.shape)
            try:
                x = obs[key] if torch.is_tensor(obs[key]) else torch.as_tensor(np.asarray(obs[key]))
            except (TypeError, ValueError, RuntimeError) as exc:
                raise ValueError(
                    f"observation {key!r} is not a numeric array of shape (B, "
                    f"{', '.join(map(str, want))}) ({type(obs[key]).__name__}: {exc})."
                ) from exc
            if x.dim() != len(want) + 1 or tuple(x.shape[1:]) != want:
                raise ValueError(
                    f"observation {key!r} must have shape (B, {', '.join(map(str, want))}) "
                    f"(batch, n_obs_steps, *shape). Got {tuple(x.shape)}."
                )
            if batch is not None and x.shape[0] != batch:
                raise ValueError(f"observation {key!r} has batch {x.shape[0]}, others {batch}.")
            batch = x.shape[0]
            if not x.is_floating_point():
                raise ValueError(f"observation {key!r} must be float. Got dtype {x.dtype}.")
            if not torch.isfinite(x).all():
                raise ValueError(f"observation {key!r} contains NaN or inf; refusing to act.")
            out[key] = x.to(self.device, torch.float32)
        return out

    @torch.no_grad()
    def encode_condition(self, obs: Mapping[str, object]) -> torch.Tensor:
        """(B, To, cond_dim) condition from a validated observation history."""
        obs = self.validate_obs(obs)
        B, To = next(iter(obs.values())).shape[:2]
        nobs = {}
        for key, x in obs.items():
            x = x.reshape(B * To, *x.shape[2:])
            nobs[key] = self.normalizer.normalize(key, x)  # every key, as diffusion_policy
        return self.obs_encoder(nobs).reshape(B, To, -1)

    @torch.no_grad()
    def denoise(
        self,
        cond: torch.Tensor,
        noise: torch.Tensor,
        cache: Optional[BlockCache] = None,
        observer=None,
        generator: Optional[torch.Generator | list[torch.Generator]] = None,
        inpaint: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Run the K-step denoising loop from ``noise`` (B, horizon, Da); normalized actions.

        ``inpaint=(known, mask)``: normalized actions (B, horizon, Da) and a (B, horizon) bool
        mask of the slots that are fixed (real-time chunking: the actions that will execute
        while this chunk is computed). After every step the masked slots are replaced by
        ``known`` noised to the next step's level (exactly ``known`` after the last step), so
        the free slots are denoised in agreement with them (inpainting, training-free; works
        with cached execution, which only changes how eps is computed).

        ``generator``: one, or a list with one per batch row (each row's step noise then
        comes from its own generator: a batch of independent requests, e.g. several robots,
        gives each the chunk it would get alone, up to float rounding)."""
        sample = noise
        if cache is not None:
            cache.reset()
        timesteps = self.scheduler.timesteps
        fast = self._fast_step()
        run_model = getattr(cache, "run_model", None) if observer is None else None
        # One host->device copy per chunk instead of one per step; the scheduler keeps the
        # CPU value (its tables live on the CPU).
        timesteps_dev = timesteps.to(sample.device)
        if inpaint is not None:
            known, mask = inpaint[0].to(sample), inpaint[1].to(sample.device)[..., None]
            rows = mask.reshape(mask.shape[0], -1).any(dim=1).tolist()
            sample = torch.where(mask, self._noised(known, timesteps[0], generator, rows),
                                 sample)
        for k, t in enumerate(timesteps):
            if cache is not None:
                cache.set_step(k)
            step_obs = None if observer is None else (lambda b, d, k=k: observer(k, b, d))
            if run_model is not None:  # compiled execution (bac.compiled.CompiledSchedule)
                eps = run_model(k, sample, timesteps_dev[k], cond)
            else:
                eps = self.model(sample, timesteps_dev[k], cond, cache=cache, observer=step_obs)
            sample = fast(k, eps, sample, generator) if fast is not None else \
                self.scheduler.step(eps, t, sample, generator=generator).prev_sample
            if inpaint is not None:
                fixed = known if k + 1 == len(timesteps) else \
                    self._noised(known, timesteps[k + 1], generator, rows)
                sample = torch.where(mask, fixed, sample)
        return sample

    def _fast_step(self) -> Optional[FastDDPMStep]:
        """The precomputed DDPM step for the current scheduler (bit-identical to diffusers'
        ``step``, rebuilt when the scheduler or K changes), or None to use ``step``."""
        fast = getattr(self, "_fast", None)
        if fast is not None and fast.matches(self.scheduler):
            return fast
        self._fast = FastDDPMStep(self.scheduler) if FastDDPMStep.supports(self.scheduler) \
            else None
        return self._fast

    def _noised(self, x0: torch.Tensor, t: torch.Tensor, generator, rows=None) -> torch.Tensor:
        """``x0`` diffused to timestep ``t`` (the forward process the scheduler trained on).

        ``generator`` may be a list, one per batch row (as diffusers' ``randn_tensor`` takes
        it): row i's noise then comes from its own generator, and only rows with something
        fixed (``rows[i]``) draw, so a row's chunk does not depend on what it is batched with
        (the node batches several robots)."""
        if isinstance(generator, list):
            noise = torch.zeros(x0.shape, dtype=x0.dtype)
            for i, g in enumerate(generator):
                if rows is None or rows[i]:
                    noise[i] = torch.randn(x0.shape[1:], generator=g, dtype=x0.dtype)
            noise = noise.to(x0.device)
        else:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        return self.scheduler.add_noise(x0, noise, t.reshape(1).to(x0.device))

    def inpaint_target(self, actions: np.ndarray, mask: np.ndarray
                       ) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """(robot-unit actions, mask) -> ``denoise``'s ``inpaint`` (None if nothing is fixed)."""
        want = (self.config.horizon, self.config.shape_meta.action_dim)
        actions, mask = np.asarray(actions, np.float32), np.asarray(mask, bool)
        if actions.shape[1:] != want or mask.shape != actions.shape[:2]:
            raise ValueError(f"fixed actions must be (B, {want[0]}, {want[1]}) with a (B, "
                             f"{want[0]}) mask. Got {actions.shape} and {mask.shape}.")
        if not mask.any():
            return None
        if not np.isfinite(actions[mask]).all():
            raise ValueError("fixed actions contain NaN/inf")
        known = self.normalizer.normalize("action", torch.from_numpy(actions).to(self.device))
        return known, torch.from_numpy(mask).to(self.device)

    def make_noise(self, batch: int, generator: Optional[torch.Generator] = None):
        shape = (batch, self.config.horizon, self.config.shape_meta.action_dim)
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)

    @torch.no_grad()
    def predict(
        self,
        obs: Mapping[str, object],
        generator: Optional[torch.Generator] = None,
        noise: Optional[torch.Tensor] = None,
        cache: Optional[BlockCache] = None,
        num_inference_steps: Optional[int] = None,
        fixed_actions: Optional[tuple[np.ndarray, np.ndarray]] = None,
    ) -> ActionPrediction:
        """Predict an action chunk. Same ``noise`` and ``generator`` seed -> same actions.

        With ``noise`` but no ``generator``, the per-step DDPM noise is drawn from a
        generator seeded with 0, so caller-supplied noise alone is deterministic.
        ``num_inference_steps`` applies to this call only. ``fixed_actions=(actions, mask)``:
        (B, horizon, Da) actions in robot units and a (B, horizon) bool mask of the slots the
        chunk must keep (real-time chunking; see ``denoise``).
        """
        previous = self.num_inference_steps
        if num_inference_steps is not None and num_inference_steps != previous:
            self.set_num_inference_steps(num_inference_steps)
            try:  # a per-call K; the policy's own K is restored afterwards
                return self.predict(obs, generator=generator, noise=noise, cache=cache,
                                    fixed_actions=fixed_actions)
            finally:
                self.set_num_inference_steps(previous)
        cond = self.encode_condition(obs)
        B = cond.shape[0]
        if noise is None:
            noise = self.make_noise(B, generator)
        else:
            want = (B, self.config.horizon, self.config.shape_meta.action_dim)
            if tuple(noise.shape) != want:
                raise ValueError(f"noise must have shape {want}. Got {tuple(noise.shape)}.")
            noise = noise.to(self.device, torch.float32)
            if generator is None:
                generator = torch.Generator().manual_seed(0)
        inpaint = None if fixed_actions is None else self.inpaint_target(*fixed_actions)
        naction = self.denoise(cond, noise, cache=cache, generator=generator, inpaint=inpaint)
        action_pred = self.normalizer.unnormalize("action", naction)
        start = self.config.n_obs_steps - 1
        action = action_pred[:, start:start + self.config.n_action_steps]
        n_blocks = len(self.model.blocks())
        total = n_blocks * self.num_inference_steps
        computed = total if cache is None else int(cache.computed_count)
        return ActionPrediction(
            action=action.float().cpu().numpy(),
            action_pred=action_pred.float().cpu().numpy(),
            blocks_computed=computed,
            blocks_total=total,
        )

    # -- training -------------------------------------------------------------------------
    def compute_loss(self, batch: dict, generator: Optional[torch.Generator] = None):
        """diffusion_policy's loss: MSE between predicted and true noise (or sample)."""
        action = batch["action"].to(self.device)
        # "cond": features precomputed by a frozen encoder (same as encode_condition's output)
        cond = batch["cond"].to(self.device) if "cond" in batch else \
            self.encode_condition_train(batch["obs"])
        naction = self.normalizer.normalize("action", action)
        noise = torch.randn(naction.shape, generator=generator).to(naction.device)
        t = torch.randint(0, self.config.scheduler.num_train_timesteps, (naction.shape[0],),
                          generator=generator).to(naction.device)
        noisy = self.scheduler.add_noise(naction, noise, t)
        pred = self.model(noisy, t, cond)
        target = noise if self.config.scheduler.prediction_type == "epsilon" else naction
        return torch.nn.functional.mse_loss(pred, target)

    def encode_condition_train(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Like encode_condition but with gradients and the train-mode crop augmentation."""
        To = self.config.n_obs_steps
        nobs = {}
        for key in self.config.shape_meta.obs:
            x = obs[key][:, :To].to(self.device, torch.float32)
            B = x.shape[0]
            x = x.reshape(B * To, *x.shape[2:])
            nobs[key] = self.normalizer.normalize(key, x)  # every key, as diffusion_policy
        return self.obs_encoder(nobs).reshape(B, To, -1)
