"""Small helpers shared by every stage: atomic writes, seeding, logging."""
from __future__ import annotations

import contextlib
import os
import random
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Readers never see a half-written file, and a crash leaves no output behind.
    ``suffix`` keeps the extension (libraries pick the format from it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


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

    from tqdm import tqdm

    if workers <= 1 or len(jobs) <= 1:
        return [fn(job) for job in tqdm(jobs, desc=desc)]
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
        return list(tqdm(pool.map(fn, jobs), total=len(jobs), desc=desc))
