"""References that need no training, segmented through the same path as the networks:
the coarse sphere itself and the classical HU threshold inside it (one threshold for all
nodules, fit on the training scans). The third, each nodule's half-max level inside it, is
``src.data.classical.HalfMaxSegmenter`` (``infer.py`` uses it too). The component at the
centre is kept, as for every segmenter. Every learned result must clearly beat the
threshold, and is compared with half-max too."""
from __future__ import annotations

import numpy as np

from src.config import InferConfig
from src.data.classical import BINARY_LEVEL
from src.evaluation.cases import NoduleCase
from src.evaluation.metrics import dice

HU_CANDIDATES = tuple(range(-800, 101, 50))


class SphereSegmenter:
    """The coarse label itself taken as the mask."""
    sphere_fallback = True   # (never needed: the sphere is never empty)

    def __call__(self, image: np.ndarray, dist: np.ndarray) -> np.ndarray:
        return (dist <= 0).astype(np.float32)


class ThresholdSegmenter:
    """HU >= threshold inside the coarse sphere + ``margin_mm``; where nothing is, the given
    sphere (``sphere_fallback``, as every segmenter told the coordinates)."""

    def __init__(self, threshold_hu: float, k: int, margin_mm: float, sphere_fallback: bool = True):
        self.threshold, self.h, self.margin = threshold_hu, k // 2, margin_mm
        self.sphere_fallback = sphere_fallback

    def __call__(self, image: np.ndarray, dist: np.ndarray) -> np.ndarray:
        centre = image[self.h:image.shape[0] - self.h]
        return ((centre >= self.threshold) & (dist <= self.margin)).astype(np.float32)


def fit_threshold(cases: list[NoduleCase], k: int, cfg: InferConfig,
                  candidates=HU_CANDIDATES) -> tuple[float, float]:
    """The HU threshold with the best mean nodule Dice on (training) cases -> (HU, Dice)."""
    if not cases:
        return float("nan"), float("nan")
    best = (float("nan"), -1.0)
    for t in candidates:
        seg = ThresholdSegmenter(t, k, cfg.prior_margin_mm, sphere_fallback=False)   # fit on its own masks
        score = float(np.mean([dice(case.to_region(s.mask, s.box), case.truth)
                               for case in cases for s in [case.segment(seg, cfg, BINARY_LEVEL)]]))
        if score > best[1]:
            best = (float(t), score)
    return best
