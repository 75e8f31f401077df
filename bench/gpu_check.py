"""GPU check: AMP training steps and inference throughput of the configured models.

    python bench/gpu_check.py                                 # configs/default.yaml, CUDA
    python bench/gpu_check.py --config configs/cpu.yaml --device cpu --steps 3   # smoke test

Random 2.5D inputs of the configured patch size (no dataset needed). Prints, per model:
train patches/s (AMP, AdamW, the teacher's real objective), inference patches/s for the
teacher, the 5-teacher ensemble and the student, and peak GPU memory.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.cli import add_config_args, config_from_args  # noqa: E402
from src.evaluation.speed import patches_per_second  # noqa: E402
from src.models.factory import build_model, count_parameters  # noqa: E402
from src.predict.predictor import Predictor  # noqa: E402
from src.runtime import channels_last, setup_runtime  # noqa: E402
from src.train.objectives import TeacherObjective  # noqa: E402
from src.train.optim import make_optimizer  # noqa: E402


def sync(rt):
    if rt.device.type == "cuda":
        torch.cuda.synchronize()


def train_speed(rt, model, stage, k, p, steps):
    model = channels_last(model.to(rt.device).train())   # as train.py does by default (*.channels_last)
    objective = TeacherObjective(stage.loss)
    opt = make_optimizer(model.parameters(), stage.lr, stage.weight_decay, rt.device)
    scaler = rt.grad_scaler()
    b = stage.batch_size
    g = torch.Generator(device="cpu").manual_seed(0)
    dist = torch.full((b, 1, p, p), 10.0)
    dist[..., p // 3: 2 * p // 3, p // 3: 2 * p // 3] = -2.0
    c = k + int(stage.model.prompt)   # the slices, and the prompt channel of a prompted model
    batch = {"image": torch.rand(b, c, p, p, generator=g), "image_b": torch.rand(b, c, p, p, generator=g),
             "fine": (dist < 0).float(), "coarse": (dist <= 0).float(), "coarse_dist": dist,
             "fine_ok": (torch.arange(b) % 2).float(), "radius_mm": torch.full((b,), 8.0)}
    batch = {key: v.to(rt.device) for key, v in batch.items()}
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(steps + 2):  # two warm-up steps (cudnn autotuning)
        sync(rt)
        start = time.perf_counter()
        with rt.autocast():
            loss, _ = objective(model, model, batch, 10.0)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sync(rt)
        if step >= 2:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if rt.device.type == "cuda" else float("nan")
    return b / float(np.median(times)), float(loss), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--patches", type=int, default=2048, help="inference patches per timing")
    add_config_args(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)
    rt = setup_runtime(args.device, cfg.amp)
    k, p = cfg.cache.k_slices, cfg.cache.patch_size
    print(f"device {rt.device} ({torch.cuda.get_device_name() if rt.device.type == 'cuda' else 'cpu'}), "
          f"amp {rt.amp_dtype}, patch {k}x{p}x{p}, torch {torch.__version__}")

    rows = []
    teacher = build_model(cfg.teacher.model, k, p)
    student = build_model(cfg.student.model, k, p)
    for name, model, stage in (("teacher", teacher, cfg.teacher), ("student", student, cfg.student)):
        speed, loss, peak = train_speed(rt, model, stage, k, p, args.steps)
        rows.append((f"{name} {stage.model.encoder} train (batch {stage.batch_size})", count_parameters(model) / 1e6,
                     speed, peak, f"loss {loss:.3f}"))
    stacks = np.random.default_rng(0).integers(-1000, 400, (args.patches, k, p, p)).astype(np.int16)
    for name, models in (("teacher", [teacher]), ("5-teacher ensemble", [teacher] * 5), ("student", [student])):
        if rt.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        pred = Predictor(models, rt, cfg.cache.window, batch_size=cfg.infer.batch_size * 4)
        speed = patches_per_second({name: pred}, stacks)[name]
        peak = torch.cuda.max_memory_allocated() / 2**30 if rt.device.type == "cuda" else float("nan")
        rows.append((f"{name} inference", sum(count_parameters(m) for m in models[:1]) / 1e6, speed, peak, ""))
    print("| run | params (M) | patches/s | peak GPU GiB | note |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.1f} | {r[2]:.0f} | {r[3]:.2f} | {r[4]} |")
    ens = next(r[2] for r in rows if r[0].startswith("5-teacher"))
    stu = next(r[2] for r in rows if r[0].startswith("student inference"))
    print(f"student / 5-teacher ensemble throughput: {stu / ens:.1f}x")


if __name__ == "__main__":
    main()
