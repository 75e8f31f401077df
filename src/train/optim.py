"""Optimizer and learning-rate schedule of every training stage."""
from __future__ import annotations

import math

import torch


def make_optimizer(params, lr: float, weight_decay: float, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; fused on CUDA. NVIDIA apex's FusedAdam is used only if it is importable
    (apex.amp no longer exists; PyPI's 'apex' is an unrelated package)."""
    if device.type == "cuda":
        try:
            from apex.optimizers import FusedAdam  # type: ignore
            return FusedAdam(params, lr=lr, weight_decay=weight_decay, adam_w_mode=True)
        except ImportError:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up then cosine decay to 1% of the base rate, stepped per iteration."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
