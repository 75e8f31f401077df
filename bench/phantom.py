"""Built-in dataset benchmark: realised class shares, contact, distance to the pleura, edge
contrast, generation time and preview galleries of a default set.

    python bench/phantom.py                      # 130 scans (~5 min on 2 cores; reused once made)
    python bench/phantom.py --img docs/img       # the galleries the docs show

Writes outputs/bench/phantom/: report.md, realised.csv, contact.csv, wall_distance.csv,
edge_contrast.csv, kernels.csv, data/ (the set), and the galleries into --img (default: <out>/img).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.bench.phantom import run_phantom_bench  # noqa: E402
from src.cli import add_config_args, config_from_args, run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-scans", type=int, default=130, help="size of the default set")
    parser.add_argument("--out", default="outputs/bench/phantom", help="output folder")
    parser.add_argument("--img", help="where the galleries go (default: <out>/img)")
    add_config_args(parser)
    args = parser.parse_args()
    cfg = config_from_args(args).phantom
    cfg.n_scans = args.n_scans
    out = Path(args.out)
    print(run_phantom_bench(cfg, out, Path(args.img) if args.img else out / "img"))


if __name__ == "__main__":
    run(main)
