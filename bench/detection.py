"""Detection benchmark: whole-scan CPM with and without false-positive reduction.

    python bench/detection.py          # ~45 min on 2 CPU cores after bench/quality.py; resumes

Runs the FPR stage (OOF candidates from the fold teachers) on the quality benchmark's
default set (half OOF, half hold-out; 240 scans since the v2 dataset), then the student's
whole-scan detection on the hold-out scans, and writes outputs/bench/detection/: report.md, summary.csv (CPM with
bootstrap CIs, sensitivity at each FP rate, recall, candidates per scan),
sensitivity_by_group.csv, froc_oof.png, froc_holdout.png. The models and data are those of
outputs/bench/quality/ (trained here first if missing). See src/bench/detection.py.
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
    parser.add_argument("--quality", default="outputs/bench/quality", help="the quality benchmark's folder")
    parser.add_argument("--out", default="outputs/bench/detection")
    parser.add_argument("--config", default="configs/cpu.yaml", help="the recipe (as bench/quality.py)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args()
    rt = setup_runtime(args.device, "auto")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"detection benchmark on {args.quality} with {args.config}, {rt.describe()} -> {out}", flush=True)
    start = time.time()
    print(run_detection(BenchRun(Path(args.quality), BUDGETS["full"], args.config, rt), out))
    print(f"done in {(time.time() - start) / 60:.1f} min -> {out / 'report.md'}")


if __name__ == "__main__":
    run(main)
