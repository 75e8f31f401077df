"""Detection benchmark: whole-scan CPM with and without false-positive reduction, beside a
classical blob detector.

    python bench/detection.py --quality outputs/bench/quality-baseline   # after bench/quality.py; resumes
    python bench/detection.py --quick    # a fresh clone's check: trains its own small models (< 10 min)

Runs the FPR stage (OOF candidates from the fold teachers) on the quality benchmark's
default set (half OOF, half hold-out; 240 scans since the v2 dataset), the student's
whole-scan detection on the hold-out scans and the classical blob detector on all of them,
the same models on 30 hold-out scans of each shifted condition (full budget), and writes
outputs/bench/detection/: report.md, summary.csv (CPM with bootstrap CIs,
sensitivity at each FP rate, recall, candidates per scan), paired_cpm.csv (the pipeline minus
the classical detector), recall_by_group.csv, froc_oof.png, froc_holdout.png. The models and
data are those of the quality benchmark's folder (trained here first if missing). See
src/bench/detection.py.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.bench.detection import run_detection  # noqa: E402
from src.bench.protocol import BUDGETS  # noqa: E402
from src.bench.runner import BenchRun  # noqa: E402
from src.cli import run  # noqa: E402
from src.runtime import setup_runtime  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="16 scans and the quick budget's small models, trained here (a check, not a result)")
    parser.add_argument("--quality", help="the quality benchmark's folder (default outputs/bench/quality, "
                                          "with --quick outputs/bench/quality-quick)")
    parser.add_argument("--out", help="default outputs/bench/detection (with --quick: detection-quick)")
    parser.add_argument("--config", default="configs/cpu.yaml", help="the recipe (as bench/quality.py)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args()
    rt = setup_runtime(args.device, "auto")
    budget = "quick" if args.quick else "full"
    quality = Path(args.quality or ("outputs/bench/quality-quick" if args.quick else "outputs/bench/quality"))
    out = Path(args.out or ("outputs/bench/detection-quick" if args.quick else "outputs/bench/detection"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"detection benchmark ({budget}) on {quality} with {args.config}, {rt.describe()} -> {out}", flush=True)
    start = time.time()
    print(run_detection(BenchRun(quality, BUDGETS[budget], args.config, rt), out, budget))
    print(f"done in {(time.time() - start) / 60:.1f} min -> {out / 'report.md'}")


if __name__ == "__main__":
    run(main)
