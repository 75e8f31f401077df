"""Supervised loss on fine masks: per-patch Dice (MONAI) + BCE (smp)."""
from __future__ import annotations

import torch
from monai.losses import DiceLoss
from segmentation_models_pytorch.losses import SoftBCEWithLogitsLoss
from torch import nn


class DiceBCELoss(nn.Module):
    """``dice_weight`` x soft Dice + ``bce_weight`` x BCE. Targets may be soft.

    Dice is taken per patch and averaged over the patches that hold a nodule, as the
    benchmarks average Dice per nodule: over the whole batch's pixels the large nodules
    would dominate and a small one's miss would hardly count. Patches without a nodule
    (where Dice is undefined) learn from BCE alone."""

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0):
        super().__init__()
        self.dice_weight, self.bce_weight = dice_weight, bce_weight
        self.dice = DiceLoss(sigmoid=True, batch=False, reduction="none", smooth_nr=1e-5, smooth_dr=1e-5)
        self.bce = SoftBCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[0] == 0:
            return logits.sum() * 0.0  # keeps the graph when a batch has no such sample
        logits, target = logits.float(), target.float()
        loss = self.bce_weight * self.bce(logits, target)
        has_nodule = target.flatten(1).sum(1) > 0
        if has_nodule.any():
            loss = loss + self.dice_weight * self.dice(logits[has_nodule], target[has_nodule]).mean()
        return loss
