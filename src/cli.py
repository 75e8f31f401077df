"""What every top-level script shares: config options, the banner, and clean user errors.

A script's ``main()`` parses its arguments, calls ``src/`` and writes outputs; ``run(main)``
turns a :class:`~src.errors.UserError` into one line on stderr and exit code 2, so a
traceback always means a bug.
"""
from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path
from typing import Callable

from src.config import DEFAULT_CONFIG, Config, check_config, load_config
from src.errors import UserError


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"YAML config (default: {DEFAULT_CONFIG}; CPU-sized: configs/cpu.yaml)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="dotted overrides, e.g. teacher.epochs=3 cache.patch_size=96")


def config_from_args(args: argparse.Namespace) -> Config:
    """The run's config from ``--config`` and ``--set``; says which one it is."""
    cfg = load_config(args.config, args.overrides)
    extra = f" + {len(args.overrides)} override(s)" if args.overrides else ""
    print(f"config: {args.config}{extra}", flush=True)
    return cfg


def set_from_args(cfg: Config, section: str, args: argparse.Namespace, keys: tuple[str, ...]) -> None:
    """Script flags that stand for config keys (``--n-scans`` = ``phantom.n_scans``):
    set where given, then range-checked like any other config value."""
    for key in keys:
        if getattr(args, key, None) is not None:
            setattr(getattr(cfg, section), key, getattr(args, key))
    check_config(cfg)


def output_folder(path: str | Path) -> Path:
    """An output folder that can be one: not an existing file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: is a file; the output must be a folder")
    return path


def output_file(path: str | Path) -> Path:
    """An output file that can be one: not an existing folder."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; the output must be a file path")
    return path


_OS_HINTS = {errno.EEXIST: "a part of this path is a file, not a folder",
             errno.ENOTDIR: "a part of this path is a file, not a folder",
             errno.EISDIR: "is a folder, not a file", errno.ENAMETOOLONG: "name too long"}


def run(main: Callable[[], int | None]) -> None:
    """Call a script's ``main`` and turn what a user can fix into one line on stderr, exit 2:
    a UserError, or an OSError (full disk, read-only folder, a file where a folder should be)."""
    try:
        code = main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        what = _OS_HINTS.get(err.errno) or err.strerror or str(err).splitlines()[0]
        print(f"error: {where}{what} (earlier outputs are left as they were)", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
