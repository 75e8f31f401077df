"""Export the student (or any checkpoint) to ONNX: dynamic batch, and dynamic H, W where the network allows.

    python export.py --config configs/cpu.yaml                      # -> outputs/<exp>/student/student.onnx
    python export.py --checkpoint outputs/cpu/teacher/fold_0/checkpoint_best.pt --out teacher0.onnx
    python export.py --fpr --config configs/cpu.yaml                # -> outputs/<exp>/fpr/fold_K/fold_K.onnx

The model's metadata carries its input convention and the probability threshold: the
experiment's (src.predict.experiment: its OOF choice, else the config's), the student's own
for a student and the ensemble's for a teacher; for a --checkpoint stamped with one at
training, that one.
"""
import argparse
from pathlib import Path

from src.cli import add_config_args, config_from_args, output_file, run
from src.errors import DataError, UserError
from src.layout import ExperimentLayout
from src.models.checkpoint import cache_config, load_checkpoint, model_from_checkpoint, refuse_classifier
from src.models.export import export_onnx, fpr_metadata, onnx_metadata
from src.predict.experiment import TrainedExperiment
from src.predict.fpr import CandidateScorer
from src.runtime import setup_runtime


def export_fpr(layout: ExperimentLayout) -> None:
    if not layout.has_fpr():
        raise DataError(f"{layout.fpr_dir}: no trained FPR classifiers; run train.py --stage fpr first")
    paths = layout.fpr_checkpoints()
    scorer = CandidateScorer.load(paths, layout.fpr_combination, setup_runtime("cpu"))
    for path, model in zip(paths, scorer.models):
        ckpt = load_checkpoint(path)
        metadata = fpr_metadata(scorer.detect, scorer.window, scorer.weight, path, ckpt["model_config"]["arch"])
        out = export_onnx(model, ckpt["in_channels"], ckpt["patch_size"], layout.onnx(path.parent), metadata)
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
    refuse_classifier(ckpt_path, ckpt)   # those export with --fpr
    # a teacher is applied at the ensemble's threshold, the student at its own
    threshold, source = TrainedExperiment(layout, cfg).threshold("student" if ckpt.get("stage") == "student"
                                                                 else "ensemble")
    if args.checkpoint and ckpt.get("threshold") is not None:
        threshold, source = ckpt["threshold"], f"{ckpt_path} (stamped at training)"
    model = model_from_checkpoint(ckpt_path, ckpt=ckpt)
    metadata = onnx_metadata(cache_config(ckpt), float(threshold), source, ckpt_path, model.prompted,
                             fixed_size=model.fixed_input_size is not None)
    export_onnx(model, ckpt["in_channels"], ckpt["patch_size"], out, metadata)
    print(f"threshold {threshold} from {source} -> {out}")


if __name__ == "__main__":
    run(main)
