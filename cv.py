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

import pandas as pd

from src.cli import add_config_args, config_from_args, run
from src.config import code_version, config_hash
from src.data.context import load_context
from src.evaluation.leaderboard import render, tidy
from src.evaluation.oof import check_oof_folds, choose_threshold, read_oof, score_oof
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
    layout = ctx.layout

    if not args.holdout:
        oof = read_oof(layout.all_oof_predictions(), layout.root)
        check_oof_folds(oof, ctx.folds, cfg.paths.folds)
        choice = choose_threshold(oof)
        dice_at = choice["oof_dice_at_threshold"]
        print(f"probability threshold chosen on OOF: {choice['threshold']} (pooled OOF Dice "
              f"{dice_at[choice['threshold']]:.4f}; {dice_at[0.5]:.4f} at 0.5) -> {layout.write_postprocessing(choice)}")
        scored = score_oof(oof, choice["threshold"])
        per_nodule = pd.concat([scored.assign(model=[f"teacher fold {f}" for f in scored["fold"]]),
                                scored.assign(model=f"OOF, {scored['fold'].nunique()} folds pooled")],
                               ignore_index=True)
        name, speed = "leaderboard", None
        title = (f"{cfg.paths.experiment}: cross-validation, out-of-fold, at threshold {choice['threshold']} "
                 "(chosen on these OOF predictions)")
        atomic_to_csv(scored, layout.per_nodule("oof"), float_format="%.5g")
    else:
        from src.evaluation.holdout import build_segmenters, score_holdout
        from src.predict.experiment import TrainedExperiment
        from src.runtime import setup_runtime
        experiment = TrainedExperiment(layout, cfg)
        (threshold, source), (own, own_source) = experiment.threshold(), experiment.threshold("student")
        print(f"probability threshold {threshold} from {source}; the student's {own} from {own_source}")
        segmenters, speed = build_segmenters(ctx, setup_runtime(args.device or cfg.device, cfg.amp))
        per_nodule, name = score_holdout(ctx, segmenters), "holdout_leaderboard"
        atomic_to_csv(per_nodule, layout.per_nodule("holdout"), float_format="%.5g")
        title = (f"{cfg.paths.experiment}: hold-out ({per_nodule['seriesuid'].nunique()} scans, "
                 f"{per_nodule['nodule_uid'].nunique()} nodules) at threshold {threshold} (student {own}); student throughput = "
                 f"{speed.attrs['student_over_ensemble']:.1f}x the {speed.attrs['n_teachers']}-teacher ensemble")
        speed = speed.round(3)

    text = render(per_nodule, title, extra=speed) + f"\n_code version {code_version()}, config hash {config_hash(cfg)}_\n"
    csv_path, md_path = layout.leaderboard(name)
    atomic_to_csv(tidy(per_nodule), csv_path, float_format="%.5g")
    atomic_write_text(md_path, text)
    print(text)
    print(f"-> {md_path}")


if __name__ == "__main__":
    run(main)
