"""Build the 2.5D patch cache (HDF5) from a LUNA16-layout folder or a hospital manifest.

    python prepare.py                                   # paths.data -> paths.cache of configs/default.yaml
    python prepare.py --config configs/cpu.yaml
    python prepare.py --manifest hospital.csv --out input/cache/lc183.h5

The dataset is checked first (verify.py --quick: headers, masks, coordinates), and a bad
one stops before any work. Interrupted runs resume (finished scans are kept as shards); a
cache built with another config or source is never overwritten unless --overwrite is given.
"""
import argparse
import time

from src.cli import add_config_args, config_from_args, output_file, run, set_from_args
from src.data.cache import PatchCache, build_cache, summarize
from src.data.manifest import dataset_source, read_dataset
from src.data.verify import verify_records
from src.errors import DataError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="LUNA16-layout folder (default: paths.data)")
    parser.add_argument("--manifest", help="hospital CSV manifest (default: paths.manifest)")
    parser.add_argument("--out", help="cache file (default: paths.cache)")
    parser.add_argument("--workers", type=int, help="parallel processes (cache.workers)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cache")
    add_config_args(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)
    set_from_args(cfg, "cache", args, ("workers",))
    out = output_file(args.out or cfg.paths.cache)

    start = time.time()
    records = read_dataset(cfg.paths, args.data, args.manifest)
    report = verify_records(records, full=False, desc="check scans")
    if not report.ok:
        print(report.render())
        raise DataError(f"{len(report.errors)} error(s) in the dataset (listed above); nothing was built")
    build_cache(records, cfg.cache, out, source=dataset_source(cfg.paths, args.data, args.manifest),
                overwrite=args.overwrite)
    print(summarize(PatchCache(out)))
    print(f"  built in {time.time() - start:.1f} s, {out.stat().st_size / 1e6:.0f} MB")


if __name__ == "__main__":
    run(main)
