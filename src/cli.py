"""What every top-level script shares: config options, the banner, and clean user errors.

A script's ``main()`` parses its arguments, calls ``src/`` and writes outputs; ``run(main)``
turns a :class:`~src.errors.UserError` into one line on stderr and exit code 2, so a
traceback always means a bug.
"""
from __future__ import annotations

import argparse
import errno
import sys
from typing import Callable

from src.config import DEFAULT_CONFIG, Config, load_config
from src.errors import UserError


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"YAML config (default: {DEFAULT_CONFIG}; CPU-sized: configs/cpu.yaml)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="dotted overrides, e.g. teacher.epochs=3 cache.patch_size=96")


def config_from_args(args: argparse.Namespace, quiet: bool = False) -> Config:
    """The run's config from ``--config`` and ``--set``; says which one it is."""
    cfg = load_config(args.config, args.overrides)
    if not quiet:
        extra = f" + {len(args.overrides)} override(s)" if args.overrides else ""
        print(f"config: {args.config}{extra}", flush=True)
    return cfg


# the machine's answers a user can act on: a full disk, a read-only or foreign folder
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
WRITE_PHRASES = ("No space left", "Read-only file system", "Permission denied", "Disk quota")


def _is_write_error(err: OSError) -> bool:
    return err.errno in WRITE_ERRNOS or any(p in str(err) for p in WRITE_PHRASES)


def run(main: Callable[[], int | None]) -> None:
    try:
        code = main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if not _is_write_error(err):
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or str(err).splitlines()[0]} (earlier outputs are left as they were)",
              file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
