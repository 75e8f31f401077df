"""Train a fold teacher, the distilled student, or the false-positive-reduction classifiers.

    python train.py --fold 0                          # teacher of fold 0, configs/default.yaml
    python train.py --fold 0 --config configs/cpu.yaml --set teacher.epochs=3
    python train.py --stage student --config configs/cpu.yaml
    python train.py --stage fpr --config configs/cpu.yaml   # candidates + one classifier per fold
    torchrun --nproc_per_node 4 train.py --fold 0     # DDP: rank 0 writes

Outputs go to outputs/<experiment>/teacher/fold_K/, outputs/<experiment>/student/ or
outputs/<experiment>/fpr/. --resume continues from checkpoint_last.pt (mid-epoch included).
The fpr stage needs the fold teachers (their OOF maps give its training candidates) and
skips what is already done; --fold K trains only that fold's classifier.
"""
import argparse

from src.cli import add_config_args, config_from_args, run
from src.data.context import load_context
from src.runtime import setup_runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("teacher", "student", "fpr"), default="teacher",
                        help="teacher: one fold's UNet (--fold); student: distilled from the teacher ensemble "
                             "(after pseudo_label.py); fpr: the false-positive-reduction classifiers")
    parser.add_argument("--fold", type=int, help="teacher (or fpr classifier) fold (0..n_folds-1)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: config 'device' (auto)")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoint_last.pt")
    parser.add_argument("--experiment", help="outputs/<experiment>/ (paths.experiment)")
    add_config_args(parser)
    args = parser.parse_args()
    if args.stage == "teacher" and args.fold is None:
        parser.error("--fold is required for --stage teacher")
    cfg = config_from_args(args)
    cfg.device = args.device or cfg.device
    cfg.paths.experiment = args.experiment or cfg.paths.experiment

    rt = setup_runtime(cfg.device, cfg.amp)
    print(rt.describe())
    ctx = load_context(cfg)
    if args.stage == "teacher":
        from src.train.teacher import train_teacher
        out_dir, oof = train_teacher(ctx, args.fold, rt, resume=args.resume)
        if rt.is_main:
            print(f"fold {args.fold}: OOF mean nodule Dice {oof['dice'].mean():.4f} over {len(oof)} nodules "
                  f"at threshold {cfg.infer.threshold} -> {out_dir}")
    elif args.stage == "fpr":
        from src.train.fpr import report_line, train_fpr
        result = train_fpr(ctx, rt, folds=None if args.fold is None else [args.fold], resume=args.resume)
        if rt.is_main:
            print(report_line(result, ctx.layout.fpr_dir))
    else:
        from src.train.student import train_student
        out_dir = train_student(ctx, rt, resume=args.resume)
        if rt.is_main:
            print(f"student -> {out_dir}")


if __name__ == "__main__":
    run(main)
