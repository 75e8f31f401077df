"""The errors a user can cause, as opposed to bugs.

Top-level scripts print a :class:`UserError` as one line on stderr and exit 2 (see
``src.cli``); anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input, missing files or a bad config; the message names the file and the problem."""


class DataError(UserError, ValueError):
    """Unreadable or inconsistent input data (scans, tables, caches, checkpoints)."""


class ConfigError(UserError, ValueError):
    """A config file, key, value or CLI override that cannot be used."""


class HoldoutLeak(RuntimeError):
    """Hold-out scans reached a training step: a bug, never to be skipped (unlike ``assert``,
    which ``python -O`` removes)."""
