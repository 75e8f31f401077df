"""The one inference primitive: 2.5D stacks in, per-pixel logits out.

Used by validation, pseudo-labelling, scoring, ``infer.py`` and the benchmarks, so every
number the project reports comes from the same code. It normalises HU, averages the
logits of several models (the fold ensemble) and of flip TTA, runs under autocast on
CUDA, and handles input sizes: fully convolutional models get the whole field padded to
a multiple of 32; models with fixed attention windows (MaxViT/CoAtNet) are tiled with
half-overlapping windows of their build size.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from src.data.preprocess import normalise
from src.engine.runtime import Runtime

STRIDE = 32   # smp encoders downsample 5 times
FLIPS = ((), (-1,), (-2,), (-2, -1))


def _starts(length: int, tile: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, tile // 2))
    return starts if starts[-1] == length - tile else starts + [length - tile]


class Predictor:
    def __init__(self, models: list[nn.Module], runtime: Runtime, window: tuple[float, float],
                 tta: bool = False, batch_size: int = 64):
        self.models = [m.eval().to(runtime.device) for m in models]
        self.rt, self.window, self.batch_size = runtime, tuple(window), batch_size
        self.flips = FLIPS if tta else FLIPS[:1]
        if runtime.device.type == "cuda":
            self.models = [m.to(memory_format=torch.channels_last) for m in self.models]
        sizes = {m.fixed_input_size for m in self.models if getattr(m, "fixed_input_size", None)}
        if len(sizes) > 1:
            raise ValueError(f"ensemble members need different tile sizes {sizes}")
        self.tile = next(iter(sizes)) if sizes else None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean logits over models and flips for a normalised batch (B, k, H, W)."""
        total = None
        with self.rt.autocast():
            for model in self.models:
                for dims in self.flips:
                    xi = torch.flip(x, dims) if dims else x
                    out = model(xi).float()
                    out = torch.flip(out, dims) if dims else out
                    total = out if total is None else total + out
        return total[:, 0] / (len(self.models) * len(self.flips))

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.tile is None:  # pad to a multiple of the encoder stride, air-valued (0 after normalising)
            ph, pw = (-h) % STRIDE, (-w) % STRIDE
            return self._forward(F.pad(x, (0, pw, 0, ph)))[:, :h, :w]
        th, tw = self.tile
        x = F.pad(x, (0, max(tw - w, 0), 0, max(th - h, 0)))
        out = torch.zeros(x.shape[0], *x.shape[-2:], device=x.device)
        count = torch.zeros(x.shape[-2:], device=x.device)
        for y0 in _starts(x.shape[-2], th):
            for x0 in _starts(x.shape[-1], tw):
                out[:, y0:y0 + th, x0:x0 + tw] += self._forward(x[..., y0:y0 + th, x0:x0 + tw])
                count[y0:y0 + th, x0:x0 + tw] += 1
        return (out / count)[:, :h, :w]

    @torch.inference_mode()
    def logits(self, stacks_hu: np.ndarray) -> np.ndarray:
        """(N, k, H, W) HU -> (N, H, W) float32 mean logits, in batches of ``batch_size``."""
        out = np.empty((stacks_hu.shape[0], *stacks_hu.shape[-2:]), dtype=np.float32)
        for i in range(0, stacks_hu.shape[0], self.batch_size):
            x = torch.from_numpy(normalise(stacks_hu[i:i + self.batch_size], self.window))
            x = x.to(self.rt.device, non_blocking=True)
            if self.rt.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            out[i:i + x.shape[0]] = self._run(x).cpu().numpy()
        return out

    def prob(self, stacks_hu: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(stacks_hu) / temperature))
