"""Speed columns for the leaderboard: parameters, GFLOPs per patch, patches/s here."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from src.models.factory import count_parameters
from src.predict.predictor import Predictor

SPEED_PATCHES = 512
SPEED_BATCH = 128


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


def speed_table(predictors: dict[str, Predictor], cache, k: int, patch: int) -> pd.DataFrame:
    """Parameters, GFLOPs and patches/s of each predictor on the same real cache patches, at
    one batch size for all; ``attrs['student_over_ensemble']`` when both are present."""
    rows = np.sort(np.random.default_rng(0).choice(len(cache.patches), min(SPEED_PATCHES, len(cache.patches)),
                                                   replace=False))
    stacks = cache.file["patches/image"][rows]
    timed = {name: p.with_batch_size(SPEED_BATCH) for name, p in predictors.items()}
    rates = patches_per_second(timed, stacks)
    speed = pd.DataFrame([dict(model=name, params_M=sum(count_parameters(m) for m in p.models) / 1e6,
                               gflops_per_patch=sum(gflops_per_patch(m, k, patch) for m in p.models),
                               patches_per_s=rates[name]) for name, p in predictors.items()])
    if {"student", "teacher ensemble"} <= set(speed["model"]):
        ensemble = float(speed.loc[speed["model"] == "teacher ensemble", "patches_per_s"].iloc[0])
        speed["vs ensemble"] = speed["patches_per_s"] / ensemble
        speed.attrs["student_over_ensemble"] = float(
            speed.loc[speed["model"] == "student", "patches_per_s"].iloc[0]) / ensemble
    return speed
