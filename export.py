"""Export the student (or any checkpoint) to ONNX with dynamic batch and spatial size.

    python export.py --config configs/cpu.yaml                      # -> outputs/<exp>/student/student.onnx
    python export.py --checkpoint outputs/cpu/teacher/fold_0/checkpoint_best.pt --out teacher0.onnx
    python export.py --fpr --config configs/cpu.yaml                # -> outputs/<exp>/fpr/fold_K/fold_K.onnx

The model's metadata carries its input convention and the probability threshold: the
experiment's (src.predict.experiment: its OOF choice, else the config's); for a --checkpoint
of its own, the one stamped into it at training, else the experiment's.
"""
import argparse
import json
from pathlib import Path

from src.cli import add_config_args, config_from_args, output_file, run
from src.config import DetectConfig
from src.errors import DataError, UserError
from src.layout import ExperimentLayout
from src.models.checkpoint import cache_config, load_checkpoint, model_from_checkpoint
from src.models.export import export_onnx, fpr_metadata, onnx_metadata
from src.predict.experiment import TrainedExperiment


def export_fpr(layout: ExperimentLayout) -> None:
    if not layout.has_fpr():
        raise DataError(f"{layout.fpr_dir}: no trained FPR classifiers; run train.py --stage fpr first")
    weight = float(json.loads(layout.fpr_combination.read_text())["weight"])
    for path in layout.fpr_checkpoints():
        ckpt = load_checkpoint(path)
        detect = DetectConfig(**ckpt["config"]["detect"])
        metadata = fpr_metadata(detect, ckpt["config"]["cache"]["window"], weight, path, ckpt["model_config"]["arch"])
        out = export_onnx(model_from_checkpoint(path), ckpt["in_channels"], ckpt["patch_size"],
                          layout.onnx(path.parent), metadata)
        print(f"{path} -> {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="default: outputs/<experiment>/student/checkpoint_best.pt")
    parser.add_argument("--out", help="default: <stage>.onnx beside the checkpoint")
    parser.add_argument("--experiment", help="outputs/<experiment>/ (paths.experiment)")
    parser.add_argument("--fpr", action="store_true", help="export every false-positive-reduction classifier")
    add_config_args(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)
    layout = ExperimentLayout.from_paths(cfg.paths, args.experiment)
    if args.fpr:
        export_fpr(layout)
        return
    ckpt_path = Path(args.checkpoint) if args.checkpoint else layout.student_checkpoint()
    out = output_file(args.out) if args.out else layout.onnx(ckpt_path.parent)
    if out.suffix.lower() != ".onnx":
        raise UserError(f"{out}: export writes ONNX only; name the file .onnx")

    ckpt = load_checkpoint(ckpt_path)
    threshold, source = TrainedExperiment(layout, cfg).threshold("student")
    if args.checkpoint and ckpt.get("threshold") is not None:
        threshold, source = ckpt["threshold"], f"{ckpt_path} (stamped at training)"
    model = model_from_checkpoint(ckpt_path)
    metadata = onnx_metadata(cache_config(ckpt), float(threshold), source, ckpt_path, model.prompted)
    export_onnx(model, ckpt["in_channels"], ckpt["patch_size"], out, metadata)
    print(f"threshold {threshold} from {source} -> {out}")


if __name__ == "__main__":
    run(main)
