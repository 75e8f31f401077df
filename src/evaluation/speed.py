"""Speed columns for the leaderboard: parameters, GFLOPs per patch, patches/s here, and
optionally lung-box slices/s (whole-scan search's input, where each pass is large enough
for arithmetic, not per-layer overhead, to set the pace)."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from src.models.factory import count_parameters
from src.predict.detect import lung_box, lung_box_stacks, lung_region
from src.predict.predictor import Predictor
from src.predict.segment import ModelVolume

SPEED_PATCHES = 512
SPEED_BATCH = 128
SPEED_SLICES = 32   # one batch of whole-scan search (InferConfig.batch_size)


def gflops_per_patch(model: torch.nn.Module, k: int, patch: int) -> float:
    """Forward FLOPs of one (k [+ prompt], patch, patch) input, counted by torch (multiply-add = 2)."""
    channels = k + int(getattr(model, "prompted", False))
    x = torch.zeros(1, channels, patch, patch, device=next(model.parameters()).device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 1e9


def _timed_pass(predictor: Predictor, stacks_hu: np.ndarray) -> float:
    if predictor.rt.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    predictor.logits(stacks_hu)
    if predictor.rt.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def patches_per_second(predictors: dict[str, Predictor], stacks_hu: np.ndarray, rounds: int = 3,
                       min_seconds: float = 1.0) -> dict[str, float]:
    """Throughput of each predictor on real patches, after one warm-up batch each.

    The predictors take turns, round after round, so that a slow spell of a shared machine
    hits all of them alike; in each round a fast model repeats its pass until `min_seconds`
    have passed. Each model's best round counts (as timeit does): noise only ever slows."""
    for predictor in predictors.values():
        predictor.logits(stacks_hu[: predictor.batch_size])
    best = dict.fromkeys(predictors, 0.0)
    for _ in range(rounds):
        for name, predictor in predictors.items():
            passes, seconds = 0, 0.0
            while seconds < min_seconds:
                seconds += _timed_pass(predictor, stacks_hu)
                passes += 1
            best[name] = max(best[name], passes * len(stacks_hu) / seconds)
    return best


def lung_slices(mv: ModelVolume, n: int = SPEED_SLICES) -> np.ndarray:
    """(n, k, h, w) HU: the 2.5D stacks of ``n`` consecutive lung-box slices from the middle
    of the lungs, as whole-scan search cuts them (fewer if the lungs span fewer slices)."""
    region = lung_region(mv)
    if not region.any():
        raise ValueError("no lung found to time whole-scan search on")
    zs, corner, size = lung_box(region)
    start = max(len(zs) // 2 - n // 2, 0)
    return lung_box_stacks(mv, zs[start:start + n], corner, size)


def speed_table(predictors: dict[str, Predictor], cache, k: int, patch: int,
                slices_hu: np.ndarray | None = None) -> pd.DataFrame:
    """Parameters, GFLOPs and patches/s of each predictor on the same real cache patches, at
    one batch size for all, and with ``slices_hu`` (:func:`lung_slices`) lung-box slices/s
    in batches of ``SPEED_SLICES``. Beside each rate, its ratio to the teacher ensemble's;
    ``attrs['student_over_ensemble']`` (patches) when both are present."""
    rows = np.sort(np.random.default_rng(0).choice(len(cache.patches), min(SPEED_PATCHES, len(cache.patches)),
                                                   replace=False))
    stacks = cache.file["patches/image"][rows]
    rates = patches_per_second({name: p.with_batch_size(SPEED_BATCH) for name, p in predictors.items()}, stacks)
    speed = pd.DataFrame([dict(model=name, params_M=sum(count_parameters(m) for m in p.models) / 1e6,
                               gflops_per_patch=sum(gflops_per_patch(m, k, patch) for m in p.models),
                               patches_per_s=rates[name]) for name, p in predictors.items()])
    columns = ["patches_per_s"]
    if slices_hu is not None:
        slice_rates = patches_per_second({name: p.with_batch_size(SPEED_SLICES) for name, p in predictors.items()},
                                         slices_hu)
        speed["lung_slices_per_s"] = speed["model"].map(slice_rates)
        columns.append("lung_slices_per_s")
    if {"student", "teacher ensemble"} <= set(speed["model"]):
        ensemble, student = (speed.set_index("model").loc[name] for name in ("teacher ensemble", "student"))
        for column in columns:
            speed[f"{column.split('_per_s')[0]} vs ensemble"] = speed[column] / ensemble[column]
        speed.attrs["student_over_ensemble"] = float(student["patches_per_s"] / ensemble["patches_per_s"])
    return speed
