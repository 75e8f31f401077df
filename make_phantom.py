"""Build the built-in dataset: real LIDC nodules in synthetic chest CT, LUNA16 layout.

Nodules are placed isolated, against the pleura or on a vessel at published frequencies,
rendered from one reader's outline (the truth is the readers' consensus), with their LIDC
density and calcification; a third of the scans hold no annotated nodule (src/phantom/).

    python make_phantom.py                                  # paths.data, phantom.* of the config
    python make_phantom.py --out input/luna16 --n-scans 30 --seed 0

Same command, same bytes. Reruns with an unchanged config are skipped (phantom.json).
"""
import argparse
import time

import pandas as pd

from src.cli import add_config_args, config_from_args, output_folder, run, set_from_args
from src.phantom.dataset import clear_out_dir, generate_dataset, is_current, preview_items, stamp
from src.utils import atomic_write_text
from src.viz import nodule_gallery


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="output folder (default: paths.data)")
    parser.add_argument("--n-scans", type=int, help="number of scans (phantom.n_scans)")
    parser.add_argument("--seed", type=int, help="which LIDC scans and which anatomy (phantom.seed)")
    parser.add_argument("--max-slices", type=int, help="z crop around the nodules (phantom.max_slices)")
    parser.add_argument("--workers", type=int, help="parallel processes (phantom.workers)")
    add_config_args(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)
    set_from_args(cfg, "phantom", args, ("n_scans", "seed", "max_slices", "workers"))
    out = output_folder(args.out or cfg.paths.data)

    if is_current(cfg.phantom, out):
        print(f"{out}: up to date (phantom.json matches this config); nothing to do")
        return
    clear_out_dir(out)
    start = time.time()
    scans = generate_dataset(cfg.phantom, out)
    seconds = time.time() - start
    atomic_write_text(out / "phantom.json", stamp(cfg.phantom))
    nodule_gallery(preview_items(out), out / "preview.png", title="built-in dataset: fine masks (>= 50% readers)")

    size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    annotations = pd.read_csv(out / "annotations.csv")
    print(f"{out}: {len(scans)} scans, {len(annotations)} annotated nodules, "
          f"{pd.read_csv(out / 'annotations_excluded.csv').shape[0]} excluded findings")
    nodules = pd.read_csv(out / "nodules.csv")
    print(f"  {seconds:.1f} s ({seconds / len(scans):.2f} s/scan wall), {size_mb:.0f} MB "
          f"({size_mb / len(scans):.1f} MB/scan); {int((scans['n_annotated'] == 0).sum())} scans without a nodule; "
          f"kernels: {scans['profile'].value_counts().to_dict()}")
    print(f"  attachment: {nodules['attachment'].value_counts().to_dict()}; "
          f"density: {nodules['density'].value_counts().to_dict()}; preview: {out / 'preview.png'}")


if __name__ == "__main__":
    run(main)
