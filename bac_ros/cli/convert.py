"""`bac convert`: diffusion_policy .ckpt -> bac_ros .safetensors (safe, fast to load)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="convert a diffusion_policy .ckpt to bac_ros .safetensors",
        description="Load a diffusion_policy checkpoint (without the diffusion_policy package) "
                    "and write bac_ros's single-file safetensors format, which the node loads "
                    "by default (no pickle).")
    p.add_argument("input", help="diffusion_policy .ckpt (or a bac_ros .safetensors)")
    p.add_argument("output", help="output .safetensors path")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow full-pickle loading of the input (only for files you trust)")
    p.add_argument("--fp16", action="store_true", help="store float weights as fp16")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args) -> int:
    from bac_ros.cli.common import print_json
    from bac_ros.engine.checkpoint import load_policy, save_policy
    from bac_ros.io_utils import refuse_overwrite

    refuse_overwrite(args.output, args.input)
    policy = load_policy(args.input, allow_pickle=args.allow_pickle)
    out = save_policy(policy, args.output, fp16=args.fp16)
    info = {"input": args.input, "output": str(out), "fingerprint": policy.fingerprint,
            "policy": policy.config.name, "fp16": args.fp16,
            "parameters": sum(p.numel() for p in policy.parameters()),
            "bytes": out.stat().st_size}
    if args.json:
        print_json(info)
    else:
        print(f"wrote {out} ({info['bytes'] / 1e6:.1f} MB, {info['parameters']:,} parameters, "
              f"fingerprint {policy.fingerprint})")
    return 0
