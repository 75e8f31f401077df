"""Quality benchmark: SSLKD against its alternatives, on enough nodules to tell.

    python bench/quality.py                     # full protocol (~8 h on 2 CPU cores; resumes, across sessions)
    python bench/quality.py --budget baseline   # references, SSL teachers, SSLKD student, one seed
    python bench/quality.py --quick             # smoke test of every code path (8 min) = --budget quick
    python bench/quality.py --report-only       # report.md from what a run has scored so far
    python bench/quality.py --part shifted      # only some steps (two processes can share a run)

Builds the built-in dataset at benchmark scale plus shifted variants (noise, slice
thickness, texture mix, soft edges), trains every arm with the same schedule through the
pipeline's own stages, scores all of them on the same hold-out nodules, and writes
outputs/bench/quality[-quick]/: report.md, per_nodule.csv, paired_differences.csv,
conditions.csv, learning_curve.csv/png, dice_by_arm.png. The protocol is in
src/bench/protocol.py; rerunning resumes from what is already there.
"""
import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.bench.protocol import BUDGETS  # noqa: E402
from src.bench.quality import PARTS, report_so_far, run_quality  # noqa: E402
from src.bench.runner import BenchRun  # noqa: E402
from src.cli import run  # noqa: E402
from src.runtime import setup_runtime  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full", help="protocol size (src/bench/protocol.py)")
    parser.add_argument("--quick", action="store_true", help="small smoke-test protocol (--budget quick)")
    parser.add_argument("--out", help="output folder (default: outputs/bench/quality[-quick])")
    parser.add_argument("--config", default="configs/cpu.yaml", help="the recipe every arm trains with")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the budget's)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--report-only", action="store_true",
                        help="write report.md from what is scored so far (a run in progress or cut short); trains nothing")
    parser.add_argument("--part", choices=PARTS, nargs="+", default=PARTS,
                        help="protocol steps to train and score (default: all); processes sharing --out need different parts")
    args = parser.parse_args()
    budget = BUDGETS["quick" if args.quick else args.budget]
    if args.seeds:
        budget = replace(budget, seeds=tuple(args.seeds))
    out = Path(args.out or f"outputs/bench/quality{'' if budget.name == 'full' else '-' + budget.name}")
    rt = setup_runtime(args.device, "auto")
    print(f"quality benchmark ({budget.name}) with {args.config} on {rt.describe()} -> {out}", flush=True)
    start = time.time()
    run = BenchRun(out, budget, args.config, rt)
    text = report_so_far(run) if args.report_only else run_quality(run, tuple(args.part))
    print(text)
    print(f"done in {(time.time() - start) / 60:.1f} min -> {out / 'report.md'}")


if __name__ == "__main__":
    run(main)
