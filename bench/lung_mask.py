"""HU-only lung mask (whole-scan mode without a shipped lung mask): Dice of
lung_mask_from_hu against seg-lungs-LUNA16 (> 0) through four fields of view, and its time.

    python bench/lung_mask.py                        # first 10 scans of input/luna16
    python bench/lung_mask.py --n-scans 30           # the docs' figures (~1.5 min on 2 cores)

Fields of view: (a) whole scan, (b) central 70 % in x, (c) inside the chest wall on all
sides, (d) inside one lung + ~15 mm of mediastinum (definitions: src/bench/lung_mask.py).
Writes <out>/per_scan.csv (one row per scan and field of view) and <out>/summary.csv, and
prints the summary table.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.bench.lung_mask import run_lung_mask_bench  # noqa: E402
from src.cli import run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="input/luna16", help="LUNA16-layout folder with seg-lungs-LUNA16/")
    parser.add_argument("--n-scans", type=int, default=10, help="the first N scans with a lung mask, subset order")
    parser.add_argument("--out", default="outputs/bench/lung_mask", help="output folder")
    args = parser.parse_args()
    if args.n_scans < 1:
        parser.error("--n-scans must be at least 1")
    out = Path(args.out)
    print(run_lung_mask_bench(Path(args.data), args.n_scans, out))
    print(f"-> {out / 'per_scan.csv'}, {out / 'summary.csv'}")


if __name__ == "__main__":
    run(main)
