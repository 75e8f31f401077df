"""Small helpers shared by every stage: atomic writes, seeding, progress."""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np


def _read_umask() -> int:
    mask = os.umask(0o022)   # reading the umask means setting it: done once, at import, so that
    os.umask(mask)           # no other thread ever creates a file in between
    return mask


UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Readers never see a half-written file, and a crash leaves no output behind.
    ``suffix`` keeps the extension (libraries pick the format from it).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    except OSError as err:  # a read-only or full output folder: name the file we wanted
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600; give the file what a plain open() would
            os.chmod(tmp_path, 0o666 & ~UMASK)
        os.replace(tmp_path, path)
    except OSError as err:
        if err.errno is not None and err.filename in (None, str(tmp_path), tmp):
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def copy_file(src: str | Path, dst: str | Path) -> None:
    with atomic_path(dst, suffix=Path(dst).suffix) as tmp:
        shutil.copyfile(src, tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")   # the locale may be ASCII


def atomic_to_csv(df, path: str | Path, **kwargs) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False, **kwargs)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch
        torch.manual_seed(seed)
    except ImportError:  # data-only stages do not need torch
        pass


def parallel_map(fn, jobs: list, workers: int, desc: str) -> list:
    """``[fn(j) for j in jobs]`` with a progress bar, over ``workers`` spawned processes
    (in-process when workers <= 1). Order is kept; a crashed worker raises instead of hanging."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing as mp

    if workers <= 1 or len(jobs) <= 1:
        return [fn(job) for job in progress(jobs, desc=desc)]
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
        return list(progress(pool.map(fn, jobs), total=len(jobs), desc=desc))


LOG_EVERY_S = 10.0   # progress lines when stderr is not a terminal (a log file, CI)


class _LogProgress:
    """tqdm's interface for piped output: one plain line at most every ``LOG_EVERY_S``
    seconds and one at the end, instead of a carriage-return bar per step."""

    def __init__(self, iterable: Iterable, desc: str, total: int | None):
        self.iterable, self.desc = iterable, desc
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.postfix = ""

    def __len__(self) -> int:
        return self.total or 0

    def set_postfix(self, **kwargs) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in kwargs.items())

    def _line(self, n: int, start: float) -> None:
        of = f"/{self.total}" if self.total else ""
        print(f"{self.desc}: {n}{of} ({time.time() - start:.0f} s) {self.postfix}".rstrip(), file=sys.stderr,
              flush=True)

    def __iter__(self):
        start = last = time.time()
        n = shown = 0
        for item in self.iterable:
            yield item
            n += 1
            if time.time() - last >= LOG_EVERY_S:
                last, shown = time.time(), n
                self._line(n, start)
        if n != shown and time.time() - start >= LOG_EVERY_S / 2:
            self._line(n, start)


def progress(iterable: Iterable, desc: str, total: int | None = None, enabled: bool = True):
    """A tqdm bar on a terminal; elsewhere plain lines a few seconds apart."""
    from tqdm import tqdm

    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
    return _LogProgress(iterable, desc, total)
