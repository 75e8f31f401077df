"""Write soft pseudo-labels from the fold-teacher ensemble (flip TTA, coarse prior).

    python pseudo_label.py --config configs/cpu.yaml

-> outputs/<experiment>/pseudo.h5 and pseudo_quality.csv (pseudo-label Dice against the
withheld fine masks of coarse scans, where they exist). Hold-out scans are never touched.
"""
import argparse

from src.config import add_config_args, load_config
from src.engine.context import load_context
from src.engine.pseudo import write_pseudo_labels
from src.engine.runtime import setup_runtime
from src.utils import atomic_to_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"))
    add_config_args(parser)
    parser.set_defaults(config="configs/default.yaml")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    cfg.device = args.device or cfg.device
    ctx = load_context(cfg)

    path, quality = write_pseudo_labels(ctx, setup_runtime(cfg.device, cfg.amp))
    atomic_to_csv(quality, ctx.experiment_dir / "pseudo_quality.csv", float_format="%.4g")
    print(f"-> {path}")
    if not quality.empty:
        print(f"pseudo-labels vs withheld fine masks ({len(quality)} nodules of coarse scans): "
              f"3D Dice {quality['dice_3d'].mean():.3f}, patch Dice {quality['patch_dice'].mean():.3f}; "
              f"the coarse sphere itself: {quality['sphere_dice'].mean():.3f}")
        print(quality.groupby("size_bin")[["dice_3d", "sphere_dice"]].mean().round(3).to_string())


if __name__ == "__main__":
    main()
