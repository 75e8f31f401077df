"""Cache read speed: random single-patch reads/s (warm) and DataLoader patches/s.

    python bench/cache_read.py --config configs/cpu.yaml
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.cli import add_config_args, config_from_args  # noqa: E402
from src.data.cache import PatchCache  # noqa: E402
from src.train.datasets import PatchDataset, PatchSelection  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reads", type=int, default=5000)
    parser.add_argument("--batches", type=int, default=50)
    add_config_args(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)
    cache = PatchCache(cfg.paths.cache)
    n = len(cache.patches)
    rng = np.random.default_rng(0)
    for i in rng.integers(n, size=min(n, 500)):  # warm the page cache
        cache.patch(int(i))
    idx = rng.integers(n, size=args.reads)
    start = time.perf_counter()
    for i in idx:
        cache.patch(int(i))
    reads = args.reads / (time.perf_counter() - start)

    ds = PatchDataset(cache, PatchSelection(np.arange(n), np.ones(n, bool)))
    sampler = torch.utils.data.RandomSampler(range(n), replacement=True, num_samples=32 * args.batches,
                                             generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(ds, batch_size=32, sampler=sampler, num_workers=2)
    start = time.perf_counter()
    for _ in loader:
        pass
    loader_rate = 32 * args.batches / (time.perf_counter() - start)
    size_mb = cache.path.stat().st_size / 1e6
    print("| cache | patches | file MB | random reads/s (warm) | DataLoader 2 workers, batch 32 (patches/s) |")
    print("|---|---|---|---|---|")
    print(f"| {cache.path} ({cache.attrs['k_slices']}x{cache.attrs['patch_size']}^2 int16, chunk = 1 patch) "
          f"| {n} | {size_mb:.0f} | {reads:,.0f} | {loader_rate:,.0f} |")


if __name__ == "__main__":
    main()
