"""Segment nodules in CT scans with the distilled student (default) or the teacher ensemble.

    python infer.py --input SCAN.mhd --out DIR                         # whole scan: find nodules
    python infer.py --input input/luna16 --coords annotations.csv --out DIR   # segment given nodules
    python infer.py --input hospital.csv --model ensemble --tta --out DIR
    python infer.py --input input/luna16 --coords annotations.csv --model half-max --out DIR

With --coords the networks are told each nodule's centre and diameter; where they find
nothing there, the given sphere stands in and is flagged (nodules.csv `source`).
--model half-max needs no training: each given nodule's own half-max HU level inside its
sphere, the classical reference the networks are measured against (docs/benchmarks.md).
Whole-scan mode rescores its candidates with the experiment's false-positive-reduction
classifiers when `train.py --stage fpr` has trained them (--no-fpr: the map's peak alone).

Inputs: LUNA16-layout folders, hospital manifests (.csv), .mhd/.nii(.gz)/.nrrd files,
flat folders of such files, DICOM series folders or folders of them. Outputs in DIR:
<seriesuid>.nii.gz label masks in each scan's own geometry (--save-prob: probability maps
too), nodules.csv, report.html and run.json; whole-scan mode adds submission.csv (LUNA16
form) and candidates.csv; a DICOM series gets <seriesuid>_seg.dcm and _sr.dcm; --qa adds
PNGs. Models: --experiment, else the config's experiment, else the newest one that has them.
"""
import argparse
from pathlib import Path

from src.cli import add_config_args, config_from_args, output_folder, run, set_from_args
from src.data.folds import holdout_uids, read_folds
from src.errors import UserError
from src.predict.experiment import load_models_for
from src.predict.run import (
    attach_coords,
    collect_inputs,
    failure_summary,
    run_inference,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="scans, folders or manifests")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--coords", help="CSV of nodule coordinates (annotations.csv form): mode 1")
    parser.add_argument("--model", choices=("student", "ensemble", "half-max"), default="student",
                        help="half-max: no network, given nodules only (needs --coords)")
    parser.add_argument("--experiment", help="outputs/<experiment>/ holding the models (an error if it has none; "
                        "without it the config's experiment, else the newest one with models)")
    parser.add_argument("--checkpoint", nargs="+", help="explicit checkpoint file(s) instead")
    parser.add_argument("--split", choices=("all", "holdout"), default="all",
                        help="only the hold-out scans of folds.csv (paths.folds)")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    parser.add_argument("--no-fpr", action="store_true",
                        help="whole-scan mode: rank candidates by the map alone, without the FPR classifiers")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: config 'device' (auto)")
    parser.add_argument("--batch-size", type=int, help="slices/patches per forward pass")
    parser.add_argument("--format", choices=(".nii.gz", ".mhd", ".nrrd"), default=".nii.gz")
    parser.add_argument("--save-prob", action="store_true", help="also write probability maps")
    parser.add_argument("--qa", action="store_true", help="PNG per scan: slices through each nodule")
    add_config_args(parser)
    args = parser.parse_args()
    if args.model == "half-max" and not args.coords:
        parser.error("--model half-max segments given nodules: it needs --coords")
    if args.model == "half-max" and (args.checkpoint or args.experiment or args.tta):
        parser.error("--model half-max uses no network: --checkpoint, --experiment and --tta do not apply")
    if args.checkpoint and args.experiment:
        parser.error("--checkpoint names the networks itself: drop --experiment")
    cfg = config_from_args(args)
    set_from_args(cfg, "infer", args, ("batch_size",))
    infer_cfg = cfg.infer

    out = output_folder(args.out)
    records, failures = collect_inputs(args.input)
    if args.split == "holdout":
        holdout = holdout_uids(read_folds(cfg.paths.folds))
        records = [r for r in records if r.seriesuid in holdout]
    if not records:
        raise UserError("no scans to process" + (f": {'; '.join(failures)}" if failures else
                                                 f" (--split holdout keeps none of {', '.join(args.input)})"))
    if args.coords:
        records = attach_coords(records, args.coords)
    models = load_models_for(cfg, args.model, args.experiment, [Path(p) for p in args.checkpoint or []],
                             device=args.device, tta=args.tta, fpr=not args.coords and not args.no_fpr)
    print(f"probability threshold {models.threshold} from {models.threshold_source}")
    n_inputs = len(records) + len(failures)
    nodules, scan_failures, timing = run_inference(records, models, infer_cfg, out, bool(args.coords),
                                                   args.format, args.save_prob, args.qa)
    failures += scan_failures
    done = len(records) - len(scan_failures)
    speed = f", {timing['seconds_per_scan']:.1f} s/scan" if timing["seconds_per_scan"] is not None else ""
    print(f"{done} scan(s) done, {len(nodules)} nodule rows{speed} -> {out}")
    if failures:
        raise UserError(failure_summary(failures, n_inputs, done, out))
    return 0

if __name__ == "__main__":
    run(main)
