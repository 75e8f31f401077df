"""Supervised loss on fine masks: Dice + BCE from smp."""
from __future__ import annotations

import torch
from segmentation_models_pytorch.losses import DiceLoss, SoftBCEWithLogitsLoss
from torch import nn


class DiceBCELoss(nn.Module):
    """``dice_weight`` x soft Dice (over the batch, so empty patches are fine) +
    ``bce_weight`` x BCE. Targets may be soft (probabilities)."""

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0):
        super().__init__()
        self.dice_weight, self.bce_weight = dice_weight, bce_weight
        self.dice = DiceLoss(mode="binary", from_logits=True)
        self.bce = SoftBCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[0] == 0:
            return logits.sum() * 0.0  # keeps the graph when a batch has no such sample
        logits, target = logits.float(), target.float()
        return self.dice_weight * self.dice(logits, target) + self.bce_weight * self.bce(logits, target)
