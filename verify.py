"""Check a dataset, its folds and its cache before any work (exit 0: fine, 2: errors).

    python verify.py                                   # paths.data (+ cache, folds, outputs) of the config
    python verify.py --config configs/cpu.yaml
    python verify.py --manifest hospital.csv --quick               # a hospital dataset, headers only

Per scan: readable, 3D, HU range, no NaN, geometry and orientation, masks on the CT's grid,
coordinates inside the volume and near the lungs, nodules without a mask label and mask
labels without a coordinate. Then: duplicate ids, folds.csv (patients disjoint, the same
scans), the cache (readable, the same scans and source), and that no checkpoint under
paths.outputs trained or validated on a hold-out scan.
"""
import argparse
from pathlib import Path

from src.cli import add_config_args, config_from_args, run
from src.data.manifest import dataset_source, read_dataset
from src.data.verify import Report, verify_cache, verify_folds, verify_folds_against_cache, verify_records
from src.errors import DataError, UserError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="LUNA16-layout folder (default: paths.data)")
    parser.add_argument("--manifest", help="hospital CSV manifest (default: paths.manifest)")
    parser.add_argument("--cache", help="patch cache to check (default: paths.cache, if it exists)")
    parser.add_argument("--folds", help="folds CSV to check (default: paths.folds, if it exists)")
    parser.add_argument("--quick", action="store_true", help="headers, masks and tables only (no pixels)")
    add_config_args(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)

    records = read_dataset(cfg.paths, args.data, args.manifest)
    report = verify_records(records, full=not args.quick)
    uids = {r.seriesuid for r in records}
    folds = Path(args.folds or cfg.paths.folds)
    if args.folds or folds.is_file():
        report.merge(verify_folds(folds, uids))
    cache = Path(args.cache or cfg.paths.cache)
    if args.cache or cache.is_file():
        report.merge(verify_cache(cache, uids, dataset_source(cfg.paths, args.data, args.manifest)))
        if folds.is_file() and report.ok:
            report.merge(verify_folds_against_cache(folds, cache))
    if folds.is_file() and Path(cfg.paths.outputs).is_dir():
        from src.data.folds import holdout_uids, read_folds
        from src.models.checkpoint import holdout_leaks
        try:
            report.merge(Report(errors=holdout_leaks(cfg.paths.outputs, holdout_uids(read_folds(folds)))))
        except DataError as err:
            report.errors.append(str(err))
    print(report.render())
    if not report.ok:   # the report above lists every problem; the error line names the first
        raise UserError(f"{len(report.errors)} error(s) found (listed above); first: {report.errors[0]}")
    return 0


if __name__ == "__main__":
    run(main)
