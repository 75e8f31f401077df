"""Split the cached scans into patient-level folds plus a hold-out set.

    python make_folds.py                                  # paths.cache -> paths.folds
    python make_folds.py --config configs/cpu.yaml --fine-fraction 0.2

The CSV is human-editable and every later stage reads its splits from it.
"""
import argparse

from src.cli import add_config_args, config_from_args, output_file, run, set_from_args
from src.data.cache import PatchCache
from src.data.folds import make_folds
from src.utils import atomic_to_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", help="cache file (default: paths.cache)")
    parser.add_argument("--out", help="folds CSV (default: paths.folds)")
    parser.add_argument("--fine-fraction", type=float,
                        help="share of training scans keeping fine masks (folds.fine_fraction, over 0 up to 1)")
    parser.add_argument("--holdout-fraction", type=float,
                        help="share of patients held out (folds.holdout_fraction, 0 up to below 1)")
    parser.add_argument("--seed", type=int, help="seed of the split (folds.seed)")
    add_config_args(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)
    set_from_args(cfg, "folds", args, ("fine_fraction", "holdout_fraction", "seed"))
    out = output_file(args.out or cfg.paths.folds)
    cache = PatchCache(args.cache or cfg.paths.cache)

    folds = make_folds(cache.scans, cache.nodules, cfg.folds)
    atomic_to_csv(folds, out)
    table = (folds.groupby("fold")
             .agg(scans=("seriesuid", "size"), patients=("patient_id", "nunique"), nodules=("n_nodules", "sum"),
                  fine=("label_kind", lambda s: int((s == "fine").sum())),
                  coarse=("label_kind", lambda s: int((s == "coarse").sum()))))
    print(f"{out}: {len(folds)} scans in {folds['fold'].nunique()} groups "
          f"(fine = masks used for training; coarse = centre + diameter only)")
    print(table.to_string())


if __name__ == "__main__":
    run(main)
