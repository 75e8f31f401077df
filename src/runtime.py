"""Where and how models run: device, mixed precision, DDP.

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

from src.errors import ConfigError


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

    def describe(self) -> str:
        amp = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + GradScaler"}[self.amp_dtype]
        ranks = f", rank {self.rank}/{self.world}" if self.distributed else ""
        return f"device: {self.device} ({amp}{ranks})"

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """A 2D network in channels_last memory (NHWC), in place: cuDNN's and, on CPU, oneDNN's
    convolutions run faster in it (docs/benchmarks.md, "Memory layout"). A network with 3D
    weights (the FPR's cube classifier) stays as it is: channels_last needs rank-4 tensors."""
    if any(p.dim() == 5 for p in model.parameters()):
        return model
    return model.to(memory_format=torch.channels_last)


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
        raise ConfigError(f"amp must be auto|bf16|fp16|off, got {amp!r}")
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
        raise ConfigError("--device cuda asked for, but no CUDA device is visible")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto|cpu|cuda, got {device!r}")
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
