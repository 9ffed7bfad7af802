"""The cache schedule: per block, the denoising steps at which it is recomputed.

Computed once per checkpoint by ``bac calibrate``, saved as human-readable YAML,
loaded (and validated against the policy) by the node at start.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bac_ros.bac.interface import BlockInfo
from bac_ros.io_utils import atomic_write_text

FORMAT_VERSION = 1
METHODS = ("full", "uniform", "shared_acs", "acs", "bac", "search", "custom")


class ScheduleError(ValueError):
    """A schedule file cannot be used; the message says why and what to do."""


class ScheduleFormatError(ScheduleError):
    pass


class ScheduleMismatchError(ScheduleError):
    pass


@dataclass
class CacheSchedule:
    fingerprint: str  # policy fingerprint the schedule was calibrated for
    scheduler_type: str  # "ddpm" | "ddim"
    num_steps: int  # K
    block_names: list[str]  # execution order, e.g. "L0.sa"
    update_steps: list[list[int]]  # C(b) per block, sorted, containing 0
    method: str = "bac"
    budget: int | None = None  # S (updates per block incl. step 0) before BUA
    bua_top_n: int = 0
    bua_selected: list[str] = field(default_factory=list)
    force_last_step: bool = False
    calibration: dict[str, Any] = field(default_factory=dict)
    flops_ratio: float | None = None  # full FLOPs / scheduled FLOPs per chunk
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.scheduler_type not in ("ddpm", "ddim"):
            raise ScheduleFormatError(f"scheduler_type must be ddpm or ddim. Got "
                                      f"{str(self.scheduler_type)[:40]!r}.")
        if self.method not in METHODS:
            raise ScheduleFormatError(f"schedule method must be one of {METHODS}. "
                                      f"Got {self.method!r}.")
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ScheduleFormatError(f"num_steps must be an integer >= 1. Got "
                                      f"{self.num_steps!r}.")
        if len(self.block_names) != len(self.update_steps):
            raise ScheduleFormatError(
                f"{len(self.block_names)} block names but {len(self.update_steps)} step sets.")
        for name, steps in zip(self.block_names, self.update_steps):
            if not steps or steps[0] != 0:
                raise ScheduleFormatError(
                    f"block {name}: update steps must start with step 0 (the first call "
                    f"computes everything). Got {steps[:5]}.")
            bad = [s for s in steps if isinstance(s, bool) or not isinstance(s, int)
                   or not 0 <= s < self.num_steps]
            if bad:
                raise ScheduleFormatError(
                    f"block {name}: update steps must be integers in [0, {self.num_steps - 1}]"
                    f". Got {bad[:5]}.")
            if list(steps) != sorted(set(steps)):
                raise ScheduleFormatError(f"block {name}: update steps must be sorted and "
                                          "unique.")

    # -- derived -------------------------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        return len(self.block_names)

    @property
    def computed_fraction(self) -> float:
        return sum(len(s) for s in self.update_steps) / (self.n_blocks * self.num_steps)

    @property
    def schedule_id(self) -> str:
        """Short hash of every field, carried in every ActionChunk. An integrity check (an
        edited or damaged file is refused), not a signature: anyone can recompute it."""
        body = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(body.encode()).hexdigest()[:12]

    def table(self) -> list[list[bool]]:
        """compute[k][b]: whether block b is recomputed at step k."""
        out = [[False] * self.n_blocks for _ in range(self.num_steps)]
        for b, steps in enumerate(self.update_steps):
            for k in steps:
                out[k][b] = True
        return out

    # -- checks against a policy ---------------------------------------------------------
    def check_compatible(self, fingerprint: str, num_steps: int, blocks: Sequence[BlockInfo],
                         allow_mismatch: bool = False, *,
                         scheduler_type: str | None = None) -> None:
        names = [b.name for b in blocks]
        if names != self.block_names:
            raise ScheduleMismatchError(
                f"schedule lists blocks {self.block_names[:3]}... ({self.n_blocks}) but the "
                f"model has {names[:3]}... ({len(names)}): it was made for another "
                "architecture. Re-run `bac calibrate` for this checkpoint.")
        if num_steps != self.num_steps:
            raise ScheduleMismatchError(
                f"schedule was calibrated for K={self.num_steps} denoising steps but the policy "
                f"runs {num_steps}. Set the policy's steps to {self.num_steps} or re-run "
                "`bac calibrate` with this step count.")
        if scheduler_type is not None and scheduler_type != self.scheduler_type:
            # Same K, other sampler: the features (and so the schedule) differ per step.
            raise ScheduleMismatchError(
                f"schedule was calibrated with the {self.scheduler_type} sampler but the policy "
                f"runs {scheduler_type}. Switch the policy to {self.scheduler_type} or re-run "
                f"`bac calibrate --scheduler {scheduler_type}`.")
        if fingerprint != self.fingerprint and not allow_mismatch:
            raise ScheduleMismatchError(
                f"schedule was calibrated for model {self.fingerprint} but this checkpoint is "
                f"{fingerprint}. Re-run `bac calibrate` for this checkpoint (or, experts only, "
                "allow the mismatch explicitly).")

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        steps = d.pop("update_steps")
        d.pop("block_names")
        d["computed_fraction"] = round(self.computed_fraction, 6)
        d["schedule_id"] = self.schedule_id
        d["blocks"] = {name: s for name, s in zip(self.block_names, steps)}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CacheSchedule:
        if not isinstance(d, dict):
            raise ScheduleFormatError(f"schedule file must hold a mapping; got {type(d).__name__}.")
        d = dict(d)
        version = d.get("version")
        if version != FORMAT_VERSION:
            raise ScheduleFormatError(f"unsupported schedule format version {version!r} "
                                      f"(this bac_ros reads version {FORMAT_VERSION}).")
        blocks = d.pop("blocks", None)
        if not isinstance(blocks, dict) or not blocks:
            raise ScheduleFormatError("schedule has no 'blocks' mapping of block -> steps.")
        d.pop("computed_fraction", None)
        stored_id = d.pop("schedule_id", None)
        required = ("fingerprint", "scheduler_type", "num_steps")
        missing = [k for k in required if k not in d]
        if missing:
            raise ScheduleFormatError(f"schedule is missing fields {missing} (truncated?).")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ScheduleFormatError(f"schedule has unknown fields {sorted(unknown)}.")
        try:
            sched = cls(block_names=list(blocks), update_steps=[list(v) for v in
                                                                blocks.values()], **d)
        except TypeError as exc:
            raise ScheduleFormatError(f"malformed schedule: {exc}") from exc
        if stored_id is not None and stored_id != sched.schedule_id:
            raise ScheduleFormatError(f"schedule_id {stored_id} does not match its content "
                                      f"({sched.schedule_id}): the file was edited or damaged.")
        return sched


MAX_SCHEDULE_BYTES = 2 * 2**20  # a 1000-step schedule of 1000 blocks is ~4 MB; ours are KB


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load without anchors/aliases: schedules never use them, and alias chains expand
    exponentially while being built (a few hundred bytes that hang the node)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None):
            raise yaml.YAMLError("YAML anchors/aliases are not allowed in a schedule file")
        return super().compose_node(parent, index)


def save_schedule(schedule: CacheSchedule, path: str | Path) -> Path:
    """Write YAML atomically (never half-written). Step lists stay on one line."""
    d = schedule.to_dict()
    blocks = d.pop("blocks")
    text = (f"# bac_ros cache schedule (method: {schedule.method}). Generated by `bac calibrate` "
            "or `bac eval`.\n")
    text += yaml.safe_dump(d, sort_keys=False, default_flow_style=False)
    text += "blocks:\n" + "".join(f"  {name}: {json.dumps(s)}\n" for name, s in blocks.items())
    return atomic_write_text(path, text)


def load_schedule(path: str | Path, policy=None, allow_mismatch: bool = False) -> CacheSchedule:
    """Read and validate; with ``policy``, also check fingerprint, K and blocks."""
    path = Path(path)
    if not path.is_file():
        raise ScheduleError(f"schedule file {path} does not exist; create it with "
                            "`bac calibrate` or disable BAC.")
    size = path.stat().st_size
    if size > MAX_SCHEDULE_BYTES:
        raise ScheduleFormatError(f"{path}: {size} bytes, larger than any schedule bac_ros "
                                  f"writes (limit {MAX_SCHEDULE_BYTES}); refusing to parse it.")
    try:
        data = yaml.load(path.read_bytes()[:MAX_SCHEDULE_BYTES].decode("utf-8"),
                         Loader=_NoAliasLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ScheduleFormatError(f"{path}: not valid YAML ({str(exc)[:300]}).") from exc
    try:
        sched = CacheSchedule.from_dict(data)
    except ScheduleError as exc:
        raise type(exc)(f"{path}: {exc}") from exc
    if policy is not None:
        sched.check_compatible(policy.fingerprint, policy.num_inference_steps,
                               policy.model.blocks(), allow_mismatch,
                               scheduler_type=policy.config.scheduler.type)
    return sched


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
