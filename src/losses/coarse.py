"""Losses for coarse labels (centre + diameter only), selectable by ``loss.coarse``.

* ``sphere``: the coarse sphere itself is the target (Dice + BCE); the naive baseline.
* ``mt``: coarse-constrained mean teacher. Pixels farther than ``margin`` mm outside every
  coarse sphere are certain background (BCE to 0); pixels within ``core_fraction`` x radius
  of the given centre are certain nodule (BCE to 1) - the two things a coordinate and a
  diameter do say. In between, the target is the EMA teacher's probability on a differently
  augmented view of the same patch, kept only where the teacher is confident, with a
  ramped-up weight.
* ``ignore``: coarse patches contribute nothing.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from src.losses.supervised import DiceBCELoss


def sigmoid_rampup(progress: float, length: float) -> float:
    """exp(-5 (1 - t)^2), the usual mean-teacher ramp (Laine & Aila); 1 after ``length``."""
    if length <= 0:
        return 1.0
    t = min(max(progress / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def masked_bce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    loss = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


def core_mask(coarse_dist: torch.Tensor, radius_mm: torch.Tensor, core_fraction: float) -> torch.Tensor:
    """Pixels within ``core_fraction`` x radius of the patch's own nodule centre (3D), i.e.
    at least (1 - core_fraction) x radius inside its sphere. Negatives (radius 0): none."""
    radius = radius_mm.view(-1, 1, 1, 1)
    depth = (1.0 - core_fraction) * radius   # 0 at core_fraction 1: the whole sphere
    return ((coarse_dist <= -depth) & (radius > 0) & (core_fraction > 0)).float()


class CoarseMeanTeacherLoss(nn.Module):
    def __init__(self, background_margin_mm: float, confidence: float, core_fraction: float = 0.0):
        super().__init__()
        self.margin, self.confidence, self.core = background_margin_mm, confidence, core_fraction

    def forward(self, logits: torch.Tensor, coarse_dist: torch.Tensor, teacher_prob: torch.Tensor,
                radius_mm: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """logits, coarse_dist (mm to the nearest sphere surface), teacher_prob: (B, 1, H, W);
        radius_mm: (B,) radius of each patch's own nodule (0 for negatives)."""
        background = (coarse_dist > self.margin).float()
        core = core_mask(coarse_dist, radius_mm, self.core) if radius_mm is not None else torch.zeros_like(logits)
        uncertain = (1.0 - background) * (1.0 - core)
        confident = ((teacher_prob > self.confidence) | (teacher_prob < 1.0 - self.confidence)).float()
        return {
            "coarse_bg": masked_bce(logits, torch.zeros_like(logits), background),
            "coarse_core": masked_bce(logits, torch.ones_like(logits), core),
            "coarse_mt": masked_bce(logits, teacher_prob, uncertain * confident),
        }


class SphereLoss(nn.Module):
    def __init__(self, dice_weight: float, bce_weight: float):
        super().__init__()
        self.loss = DiceBCELoss(dice_weight, bce_weight)

    def forward(self, logits: torch.Tensor, coarse: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"coarse_sphere": self.loss(logits, coarse)}
