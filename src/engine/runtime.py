"""Where and how training runs: device, mixed precision, DDP, optimizer.

GPU is the real target: on CUDA, ``torch.autocast`` runs in bf16 where the card supports
it (no GradScaler needed) and in fp16 with ``torch.amp.GradScaler`` otherwise. On CPU
everything is fp32 - these CPUs emulate bf16 14-25x slower (docs/reference) - but the same
code path runs, which is what the tests exercise.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None      # None = fp32
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def resolve_amp(device: torch.device, amp: str) -> torch.dtype | None:
    """auto: bf16 on CUDA cards that support it, else fp16; fp32 on CPU. off: fp32 always.
    bf16/fp16 force a dtype (on CPU only the test suite asks for this, on tiny inputs)."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if amp != "auto":
        raise ValueError(f"amp must be auto|bf16|fp16|off, got {amp!r}")
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def setup_runtime(device: str = "auto", amp: str = "auto", threads: int | None = None) -> Runtime:
    """Pick the device; join the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but no CUDA device is visible")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto|cpu|cuda, got {device!r}")
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        dev = torch.device("cpu")
        if threads:
            torch.set_num_threads(threads)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, resolve_amp(dev, amp), rank, world)


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
    import math

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
