"""Whole-scan inference speed and memory (infer.py mode 2) on a ~512x512x300 built-in scan.

    python bench/infer_speed.py --config configs/cpu.yaml [--device cuda] [--models student]

Generates one long phantom scan (real LIDC geometry, >= 280 slices) into a temporary
folder, then runs infer.py on it once per model in a fresh process, and reports seconds
per scan (as infer.py times it: load, resample, predict, candidates, the FPR classifiers
when the experiment has them, write), the whole command's wall time, and the process's
peak RSS.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.cli import add_config_args, config_from_args  # noqa: E402
from src.config import PhantomConfig  # noqa: E402
from src.phantom.dataset import generate_dataset  # noqa: E402


def long_scan(folder: Path, min_slices: int) -> Path:
    for seed in range(20):
        out = folder / f"seed{seed}"
        scans = generate_dataset(PhantomConfig(n_scans=1, seed=seed, max_slices=320, workers=1), out)
        if int(scans["n_slices"].iloc[0]) >= min_slices:
            return out
    raise RuntimeError("no LIDC scan with enough slices found")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--min-slices", type=int, default=280)
    parser.add_argument("--models", nargs="+", choices=("student", "ensemble"), default=["student", "ensemble"])
    add_config_args(parser)
    args = parser.parse_args()
    config_from_args(args)
    with tempfile.TemporaryDirectory() as tmp:
        data = long_scan(Path(tmp), args.min_slices)
        import pandas as pd
        scan = pd.read_csv(data / "scans.csv").iloc[0]
        print(f"scan: {int(scan['n_slices'])} x 512 x 512, spacing {scan['pixel_spacing_mm']:.3f} / "
              f"{scan['slice_spacing_mm']:.3f} mm, device {args.device}")
        print("| model | seconds per scan | command wall s | peak RSS GB |\n|---|---|---|---|")
        for model in args.models:
            cmd = [sys.executable, "infer.py", "--input", str(data), "--out", f"{tmp}/out_{model}",
                   "--model", model, "--device", args.device, *(["--config", args.config] if args.config else []),
                   *(["--set", *args.overrides] if args.overrides else [])]
            log = Path(tmp) / f"{model}.log"  # a file, not a pipe: wait4 must not block on a full pipe
            start = time.time()
            with open(log, "w") as stdout:
                proc = subprocess.Popen(cmd, cwd=ROOT, stdout=stdout, stderr=subprocess.STDOUT, text=True)
                _, status, usage = os.wait4(proc.pid, 0)
            out = log.read_text()
            if status != 0:
                raise RuntimeError(out[-2000:])
            per_scan = float(re.search(r"([\d.]+) s/scan", out).group(1))
            label = f"{model} + FPR" if "false-positive reduction:" in out else model
            print(f"| {label} | {per_scan:.1f} | {time.time() - start:.1f} | {usage.ru_maxrss / 1e6:.2f} |")


if __name__ == "__main__":
    main()
