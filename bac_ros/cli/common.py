"""Helpers shared by the subcommands: policy loading and JSON output."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO_DATA = Path(__file__).resolve().parents[2] / "data"
DEFAULT_POLICY = REPO_DATA / "policies" / "pusht_image.safetensors"
DEFAULT_BAG = REPO_DATA / "pusht" / "pusht_rollout"


def bundled_policy():
    """(checkpoint, schedule or None): the bundled image policy when shipped, else the
    low-dim one; the image path when neither exists, so the error names the expected file."""
    for name in ("pusht_image", "pusht_lowdim"):
        ckpt = DEFAULT_POLICY.with_name(f"{name}.safetensors")
        if ckpt.exists():
            sched = ckpt.with_name(f"{name}.schedule.yaml")
            return ckpt, sched if sched.exists() else None
    return DEFAULT_POLICY, None


def node_policy_files(checkpoint: str | None, schedule: str | None) -> tuple[str, str]:
    """(checkpoint, schedule) for the node: the bundled policy and its schedule by default; a
    user checkpoint gets no schedule unless one is given ('' = full compute)."""
    default_ckpt, default_sched = bundled_policy()
    if schedule is None:
        schedule = str(default_sched) if checkpoint is None and default_sched else ""
    return str(checkpoint or default_ckpt), schedule


def is_pusht_lowdim(policy) -> bool:
    """Observations are the Push-T low-dim ones (keypoints + agent position)."""
    return set(policy.config.shape_meta.obs) == {"keypoints", "agent_pos"}


def is_pusht_image(policy) -> bool:
    """Observations are the Push-T camera ones (96x96 frame + agent position)."""
    return set(policy.config.shape_meta.obs) == {"image", "agent_pos"}


def bundled_heldout(policy) -> Path | None:
    """The bundled held-out observations when ``policy`` is a Push-T low-dim policy: never used
    for calibration, for fidelity measurements."""
    path = REPO_DATA / "pusht" / "heldout_lowdim.npz"
    return path if is_pusht_lowdim(policy) and path.exists() else None


def parse_pairs(items: list[str], what: str) -> dict[str, str]:
    """``["A:=B", ...]`` (``--remap`` / ``--param`` values) -> ``{"A": "B"}``."""
    out = {}
    for item in items:
        if ":=" not in item:
            raise ValueError(f"{what} {item!r} must look like NAME:=VALUE")
        k, v = item.split(":=", 1)
        out[k] = v
    return out


def add_policy_args(parser, required: bool = False) -> None:
    parser.add_argument("checkpoint", nargs=None if required else "?", default=None,
                        help="policy checkpoint (.safetensors ours, or diffusion_policy .ckpt); "
                             "default: the bundled Push-T policy (image if shipped, else low-dim)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow full-pickle loading of .ckpt files (runs code in the file: "
                             "only for files you trust)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps K (default: the checkpoint's)")
    parser.add_argument("--scheduler", choices=("ddpm", "ddim"), default=None,
                        help="override the noise scheduler type (e.g. ddim for fewer steps)")


def load_policy_from_args(args):
    from bac_ros.engine.checkpoint import load_policy

    path = args.checkpoint or bundled_policy()[0]
    policy = load_policy(path, device=args.device, allow_pickle=args.allow_pickle)
    if args.scheduler and args.scheduler != policy.config.scheduler.type:
        policy.set_scheduler(args.scheduler, args.steps or policy.num_inference_steps)
    if args.steps:
        policy.set_num_inference_steps(args.steps)
    return policy


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
