"""Leaderboards.

    python cv.py --config configs/cpu.yaml             # cross-validation: OOF of the fold teachers
    python cv.py --config configs/cpu.yaml --holdout   # hold-out: teachers, ensemble, student, baselines

CV chooses the probability threshold with the best pooled OOF Dice (postprocessing.json)
and writes leaderboard.{csv,md} and oof_nodules.csv at that threshold: per fold and pooled
OOF (mean ± std per nodule), by size bin, texture and attachment, with the inter-reader Dice
of the same nodules as the ceiling. --holdout writes holdout_leaderboard.{csv,md} and
holdout_nodules.csv: every model on the hold-out patients, plus speed measured in the same
run. Both score through the same truth-free path as infer.py + evaluate.py.
"""
import argparse

from src.cli import add_config_args, config_from_args, run
from src.config import code_version, config_hash
from src.data.context import load_context
from src.evaluation.holdout import holdout_board
from src.evaluation.leaderboard import render, tidy
from src.evaluation.oof import cv_board
from src.runtime import setup_runtime
from src.utils import atomic_to_csv, atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--holdout", action="store_true", help="score all models on the hold-out set")
    parser.add_argument("--experiment", help="outputs/<experiment>/ (paths.experiment)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: config 'device' (auto)")
    add_config_args(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)
    cfg.paths.experiment = args.experiment or cfg.paths.experiment
    ctx = load_context(cfg)

    if args.holdout:
        per_nodule, title, speed = holdout_board(ctx, setup_runtime(args.device or cfg.device, cfg.amp))
        name = "holdout_leaderboard"
    else:
        (per_nodule, title), name, speed = cv_board(ctx), "leaderboard", None

    text = render(per_nodule, title, extra=speed) + f"\n_code version {code_version()}, config hash {config_hash(cfg)}_\n"
    csv_path, md_path = ctx.layout.leaderboard(name)
    atomic_to_csv(tidy(per_nodule), csv_path, float_format="%.5g")
    atomic_write_text(md_path, text)
    print(text)
    print(f"-> {md_path}")


if __name__ == "__main__":
    run(main)
