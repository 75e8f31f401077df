"""Export the student (or any checkpoint) to ONNX with dynamic batch and spatial size.

    python export.py --config configs/cpu.yaml                      # -> outputs/<exp>/student/student.onnx
    python export.py --checkpoint outputs/cpu/teacher/fold_0/checkpoint_best.pt --out teacher0.onnx
"""
import argparse
from pathlib import Path

from src.config import add_config_args, load_config
from src.engine.checkpoint import load_checkpoint, model_from_checkpoint
from src.infer.export import export_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="default: outputs/<experiment>/student/checkpoint_best.pt")
    parser.add_argument("--out", help="default: student.onnx beside the checkpoint")
    add_config_args(parser)
    parser.set_defaults(config="configs/default.yaml")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    ckpt_path = Path(args.checkpoint or Path(cfg.paths.outputs) / cfg.paths.experiment / "student" / "checkpoint_best.pt")
    out = Path(args.out or ckpt_path.with_name("student.onnx"))

    ckpt = load_checkpoint(ckpt_path)
    cache = ckpt["config"]["cache"]
    metadata = {"window_hu": cache["window"], "spacing_zyx_mm": cache["spacing_zyx"], "k_slices": cache["k_slices"],
                "input": "HU clipped to window_hu, scaled to [0,1]; (N, k, H, W), H and W multiples of 32",
                "output": "logits (N, 1, H, W); sigmoid > 0.5 = nodule", "source": str(ckpt_path)}
    export_onnx(model_from_checkpoint(ckpt_path), ckpt["in_channels"], ckpt["patch_size"], out, metadata)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
