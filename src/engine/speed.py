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


def patches_per_second(predictor: Predictor, stacks_hu: np.ndarray, repeats: int = 3) -> float:
    """Throughput of ``predictor`` on real patches (median of ``repeats`` timed passes,
    after one warm-up pass)."""
    predictor.logits(stacks_hu[: predictor.batch_size])
    times = []
    for _ in range(repeats):
        if predictor.rt.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        predictor.logits(stacks_hu)
        if predictor.rt.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return len(stacks_hu) / float(np.median(times))
