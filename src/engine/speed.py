"""Speed columns for the leaderboard: parameters, GFLOPs per patch, patches/s here."""
from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from src.infer.predictor import Predictor


def gflops_per_patch(model: torch.nn.Module, k: int, patch: int) -> float:
    """Forward FLOPs of one (k, patch, patch) input, counted by torch (multiply-add = 2)."""
    x = torch.zeros(1, k, patch, patch, device=next(model.parameters()).device)
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
