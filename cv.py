"""Leaderboards.

    python cv.py --config configs/cpu.yaml             # cross-validation: OOF of the fold teachers
    python cv.py --config configs/cpu.yaml --holdout   # hold-out: teachers, ensemble, student, baselines

CV writes outputs/<experiment>/leaderboard.{csv,md}: per fold and pooled OOF (mean ± std
per nodule), by size bin and texture, with the inter-reader Dice of the same nodules as
the ceiling. --holdout writes holdout_leaderboard.{csv,md} (+ holdout_nodules.csv): every
model on the hold-out patients in their own geometry, plus speed measured in the same run.
"""
import argparse

from src.config import add_config_args, load_config
from src.data.cache import PatchCache
from src.engine import postprocess
from src.engine.leaderboard import gather_oof, render, tidy
from src.utils import atomic_to_csv, atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--holdout", action="store_true", help="score all models on the hold-out set")
    parser.add_argument("--experiment", help="outputs/<experiment>/ (paths.experiment)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"))
    add_config_args(parser)
    parser.set_defaults(config="configs/default.yaml")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    cfg.paths.experiment = args.experiment or cfg.paths.experiment

    if not args.holdout:
        from pathlib import Path
        exp_dir = Path(cfg.paths.outputs) / cfg.paths.experiment
        per_nodule, speed, name = gather_oof(exp_dir / "teacher"), None, "leaderboard"
        title = f"{cfg.paths.experiment}: cross-validation, out-of-fold"
        choice = postprocess.choose_threshold(PatchCache(cfg.paths.cache), exp_dir / "teacher")
        print(f"probability threshold chosen on OOF: {choice['threshold']} "
              f"(pooled OOF Dice {choice['oof_dice_at_threshold'][choice['threshold']]:.4f}, "
              f"{choice['oof_dice_at_threshold'][0.5]:.4f} at 0.5) -> {postprocess.write(choice, exp_dir)}")
    else:
        from src.engine.context import load_context
        from src.engine.holdout import build_segmenters, score_holdout
        from src.engine.runtime import setup_runtime
        ctx = load_context(cfg)
        exp_dir = ctx.experiment_dir
        source = postprocess.apply(cfg.infer, exp_dir)
        print(f"probability threshold {cfg.infer.threshold} from {source}")
        segmenters, speed = build_segmenters(ctx, setup_runtime(args.device or cfg.device, cfg.amp))
        per_nodule, name = score_holdout(ctx, segmenters), "holdout_leaderboard"
        atomic_to_csv(per_nodule, exp_dir / "holdout_nodules.csv", float_format="%.5g")
        title = (f"{cfg.paths.experiment}: hold-out ({per_nodule['seriesuid'].nunique()} scans, "
                 f"{per_nodule['nodule_uid'].nunique()} nodules); student throughput = "
                 f"{speed.attrs['student_over_ensemble']:.1f}x the {speed.attrs['n_teachers']}-teacher ensemble")
        speed = speed.round(3)

    text = render(per_nodule, title, extra=speed)
    atomic_to_csv(tidy(per_nodule), exp_dir / f"{name}.csv", float_format="%.5g")
    atomic_write_text(exp_dir / f"{name}.md", text)
    print(text)
    print(f"-> {exp_dir / (name + '.md')}")


if __name__ == "__main__":
    main()
