"""Score infer.py outputs against the dataset's truth.

    python evaluate.py --pred outputs/cpu/infer_coords --data input/luna16 --split holdout
    python evaluate.py --pred outputs/cpu/infer_scan   --data input/luna16 --split holdout

Mode 1 (nodules.csv from --coords): per-nodule Dice/IoU/sensitivity/precision/HD95/NSD
against the fine masks, with each nodule's size bin, texture and attachment, as the
leaderboards score them -> scores.csv. Mode 2
(submission.csv): LUNA16 FROC and CPM with a bootstrap 95 % CI over scans, with and
without the FPR classifiers -> froc.csv, froc.png, froc_summary.csv. Only annotations.csv nodules
count; annotations_excluded.csv findings are ignored.
"""
import argparse
from pathlib import Path

from src.cli import add_config_args, config_from_args, run
from src.data.folds import holdout_uids, read_folds
from src.data.manifest import read_dataset
from src.errors import UserError
from src.evaluation.froc import froc_table, plot_froc
from src.evaluation.predictions import score_mode1, score_mode2, scored_uids, summary_line
from src.layout import InferenceOutputs
from src.utils import atomic_to_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred", required=True, help="output folder of infer.py")
    parser.add_argument("--data", help="LUNA16-layout folder with the truth (default: paths.data)")
    parser.add_argument("--split", choices=("all", "holdout"), default="all",
                        help="score only the hold-out scans of folds.csv")
    add_config_args(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)
    pred, data = Path(args.pred), Path(args.data or cfg.paths.data)
    cfg.paths.allow_partial = True  # a prediction folder may cover some scans only

    records = read_dataset(cfg.paths, data)
    keep = holdout_uids(read_folds(cfg.paths.folds)) if args.split == "holdout" else None
    uids = scored_uids(pred, records, keep)
    scored = set(uids)
    records = [r for r in records if r.seriesuid in scored]

    outputs = InferenceOutputs(pred)
    if outputs.submission.is_file():
        results = score_mode2(pred, records, uids)
        atomic_to_csv(results["final"]["curve"], outputs.froc_curve, float_format="%.5g")
        plot_froc(results, outputs.froc_plot, title=f"{len(uids)} scans")
        atomic_to_csv(froc_table(results), outputs.froc_summary, float_format="%.4f")
        print(froc_table(results).to_string(index=False))
        for name, r in results.items():
            print(f"CPM {name}: {r['cpm']:.4f} (95% CI {r['ci_low']:.3f}-{r['ci_high']:.3f}) over {r['scans']} scans, "
                  f"{r['nodules']} nodules")
        print(f"-> {outputs.froc_plot}")
    else:
        per_nodule = score_mode1(pred, records)
        if per_nodule.empty:
            raise UserError(f"{outputs.nodules}: none of its nodules lies on a fine mask of {data}: "
                            "nothing to score (no scores.csv written)")
        atomic_to_csv(per_nodule, outputs.scores, float_format="%.5g")
        print(summary_line(per_nodule))


if __name__ == "__main__":
    run(main)
