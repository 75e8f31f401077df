"""Export the student (or any checkpoint) to ONNX with dynamic batch and spatial size.

    python export.py --config configs/cpu.yaml                      # -> outputs/<exp>/student/student.onnx
    python export.py --checkpoint outputs/cpu/teacher/fold_0/checkpoint_best.pt --out teacher0.onnx

The model's metadata carries its input convention and the probability threshold stamped
into the checkpoint at training (the OOF choice), or the experiment's.
"""
import argparse
from pathlib import Path

from src.cli import add_config_args, config_from_args, run
from src.layout import ExperimentLayout
from src.models.checkpoint import cache_config, load_checkpoint, model_from_checkpoint
from src.models.export import export_onnx, onnx_metadata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="default: outputs/<experiment>/student/checkpoint_best.pt")
    parser.add_argument("--out", help="default: <stage>.onnx beside the checkpoint")
    parser.add_argument("--experiment", help="outputs/<experiment>/ (paths.experiment)")
    add_config_args(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)
    layout = ExperimentLayout.from_paths(cfg.paths, args.experiment)
    ckpt_path = Path(args.checkpoint) if args.checkpoint else layout.student_checkpoint()
    out = Path(args.out) if args.out else layout.onnx(ckpt_path.parent)

    ckpt = load_checkpoint(ckpt_path)
    threshold = ckpt.get("threshold")
    source = f"{ckpt_path} (stamped at training)"
    if threshold is None:
        threshold, source = layout.threshold(cfg.infer)
    metadata = onnx_metadata(cache_config(ckpt), float(threshold), source, ckpt_path)
    export_onnx(model_from_checkpoint(ckpt_path), ckpt["in_channels"], ckpt["patch_size"], out, metadata)
    print(f"threshold {threshold} from {source} -> {out}")


if __name__ == "__main__":
    run(main)
