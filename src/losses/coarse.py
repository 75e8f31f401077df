"""Losses for coarse labels (centre + diameter only), selectable by ``loss.coarse``.

* ``sphere``: the coarse sphere itself is the target (Dice + BCE); the naive baseline.
* ``mt``: coarse-constrained mean teacher. Pixels farther than ``margin`` mm outside every
  coarse sphere are certain background (BCE to 0). Inside sphere + margin the target is the
  EMA teacher's probability on a differently augmented view of the same patch, kept only
  where the teacher is confident, with a ramped-up weight.
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


class CoarseMeanTeacherLoss(nn.Module):
    def __init__(self, background_margin_mm: float, confidence: float):
        super().__init__()
        self.margin, self.confidence = background_margin_mm, confidence

    def forward(self, logits: torch.Tensor, coarse_dist: torch.Tensor,
                teacher_prob: torch.Tensor) -> dict[str, torch.Tensor]:
        """logits, coarse_dist (mm to the nearest sphere surface), teacher_prob: (B, 1, H, W)."""
        background = (coarse_dist > self.margin).float()
        uncertain = 1.0 - background
        confident = ((teacher_prob > self.confidence) | (teacher_prob < 1.0 - self.confidence)).float()
        return {
            "coarse_bg": masked_bce(logits, torch.zeros_like(logits), background),
            "coarse_mt": masked_bce(logits, teacher_prob, uncertain * confident),
        }


class SphereLoss(nn.Module):
    def __init__(self, dice_weight: float, bce_weight: float):
        super().__init__()
        self.loss = DiceBCELoss(dice_weight, bce_weight)

    def forward(self, logits: torch.Tensor, coarse: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"coarse_sphere": self.loss(logits, coarse)}
