"""`bac train`: train the Push-T DP-T reference policies, low-dim or image (resumable)."""

from __future__ import annotations

import argparse
import dataclasses


def register(subparsers) -> None:
    from bac_ros.pusht.train import OBS_TYPES, TrainConfig

    p = subparsers.add_parser(
        "train", help="train a DP-T on the Push-T demonstrations (diffusion_policy recipe)",
        description="Train DP-T (AdamW, cosine LR with warm-up, EMA, DDPM-100) on "
                    "data/pusht/demos.npz (make it with `python -m bac_ros.pusht.demos`). "
                    "--obs lowdim: T keypoints + agent position; --obs image: 96x96 frames "
                    "re-rendered from the demos (cached in --frames-cache) + agent position, "
                    "robomimic ResNet18 encoder. --horizon 0 = diffusion_policy's Push-T value "
                    "(16 low-dim, 10 image). Resumes from OUT/train_state.pt; writes "
                    "policy.safetensors, a diffusion_policy-format policy.ckpt and loss.png "
                    "into OUT.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        extra = {"choices": OBS_TYPES} if f.name == "obs" else {}
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       **extra)
    p.add_argument("--no-resume", action="store_true", help="start from scratch")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from bac_ros.cli.common import print_json
    from bac_ros.pusht.train import TrainConfig, train

    cfg = TrainConfig(**{f.name: getattr(args, f.name)
                         for f in dataclasses.fields(TrainConfig)})
    summary = train(cfg, resume=not args.no_resume, progress=not args.json)
    if args.json:
        print_json(summary)
    else:
        print(summary)
    return 0
