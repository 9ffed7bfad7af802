"""The ``bac`` console script: one command, one subcommand per job.

Each subcommand lives in its own module ``bac_ros.cli.<name>`` exposing
``register(subparsers)`` (adds its parser and sets ``func``). Modules import
torch and friends inside their ``run`` functions, so ``bac --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ("convert", "calibrate", "bench", "eval", "train", "replay", "play", "record",
               "handover", "soak")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bac",
        description="bac_ros: diffusion-policy inference accelerated by Block-wise Adaptive Caching.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"bac_ros.cli.{name}").register(subparsers)
    return parser


# User errors: a missing or unreadable file, a directory where a file belongs, a bad value,
# a file that fails validation (CheckpointError, ScheduleError and friends are ValueErrors).
USER_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
               FileExistsError, ValueError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.add_argument("--debug", action="store_true",
                        help="show Python tracebacks for user errors")
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        if args.debug:
            raise
        msg = " ".join(str(exc).split())  # one line
        if len(msg) > 2000:
            msg = msg[:2000] + " ..."
        print(f"bac {args.command}: error: {msg or type(exc).__name__} "
              "(--debug for a traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
