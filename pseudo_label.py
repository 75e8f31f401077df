"""Write soft pseudo-labels from the fold-teacher ensemble (flip TTA, coarse prior).

    python pseudo_label.py --config configs/cpu.yaml

-> outputs/<experiment>/pseudo.h5 and pseudo_quality.csv (pseudo-label Dice against the
withheld fine masks of coarse scans, where they exist). Hold-out scans are never touched.
Rerun after an interruption, it resumes from the batches already labelled.
"""
import argparse

from src.cli import add_config_args, config_from_args, run
from src.data.context import load_context
from src.runtime import setup_runtime
from src.train.pseudo import write_pseudo_labels
from src.utils import atomic_to_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: config 'device' (auto)")
    add_config_args(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)
    cfg.device = args.device or cfg.device
    ctx = load_context(cfg)
    rt = setup_runtime(cfg.device, cfg.amp)
    print(rt.describe())

    path, quality = write_pseudo_labels(ctx, rt)
    atomic_to_csv(quality, ctx.layout.pseudo_quality, float_format="%.4g")
    print(f"-> {path}")
    if not quality.empty:
        print(f"pseudo-labels vs withheld fine masks ({len(quality)} nodules of coarse scans): "
              f"3D Dice {quality['dice_3d'].mean():.3f}, patch Dice (nodule patches) "
              f"{quality['patch_dice'].mean():.3f}; "
              f"the coarse sphere itself: {quality['sphere_dice'].mean():.3f}")
        print(quality.groupby("size_bin")[["dice_3d", "sphere_dice"]].mean().round(3).to_string())


if __name__ == "__main__":
    run(main)
