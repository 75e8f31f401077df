"""Distillation from the teacher ensemble into the student.

* :class:`BinaryKDLoss`: per-pixel KL divergence between temperature-softened teacher and
  student probabilities (x T^2, Hinton et al.), weighted per pixel; exactly 0 when the
  student reproduces the teacher.
* :func:`nodule_region_weights`: the paper's emphasis on nodule regions - weight 1 everywhere
  plus ``region_weight`` inside the coarse sphere (+ margin) and wherever the ensemble sees
  nodule.
* :class:`AttentionTransferLoss`: feature-level term (Zagoruyko & Komodakis): spatial
  attention maps (channel-mean of squared activations) of matching encoder stages, compared
  inside the nodule region only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-4


def soften(prob: torch.Tensor, temperature: float) -> torch.Tensor:
    """Teacher probability p -> sigmoid(logit(p) / T)."""
    p = prob.float().clamp(EPS, 1 - EPS)
    return torch.sigmoid(torch.logit(p) / temperature)


def binary_kl(student_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(target || sigmoid(logits)) per pixel, numerically stable."""
    t = target.float().clamp(EPS, 1 - EPS)
    cross = F.binary_cross_entropy_with_logits(student_logits.float(), t, reduction="none")
    entropy = -(t * torch.log(t) + (1 - t) * torch.log(1 - t))
    return (cross - entropy).clamp_min(0.0)


class BinaryKDLoss(nn.Module):
    def __init__(self, temperature: float):
        super().__init__()
        self.t = temperature

    def forward(self, student_logits: torch.Tensor, teacher_prob: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
        if student_logits.shape[0] == 0:
            return student_logits.sum() * 0.0
        kl = binary_kl(student_logits / self.t, soften(teacher_prob, self.t))
        return (kl * weights).sum() / weights.sum().clamp_min(1.0) * self.t ** 2


def nodule_region(coarse_dist: torch.Tensor, teacher_prob: torch.Tensor, margin_mm: float) -> torch.Tensor:
    return ((coarse_dist <= margin_mm) | (teacher_prob >= 0.5)).float()


def nodule_region_weights(region: torch.Tensor, region_weight: float) -> torch.Tensor:
    return 1.0 + region_weight * region


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, H, W): channel-mean of squares, L2-normalised over space."""
    a = feature.float().pow(2).mean(dim=1, keepdim=True)
    return a / a.flatten(1).norm(dim=1).clamp_min(1e-6)[:, None, None, None]


class AttentionTransferLoss(nn.Module):
    def forward(self, student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor],
                region: torch.Tensor) -> torch.Tensor:
        """Mean over stages with equal spatial size of the region-masked squared difference."""
        terms = []
        for s, t in zip(student_feats, teacher_feats):
            if s.shape[-2:] != t.shape[-2:] or s.shape[1] == 0 or t.shape[1] == 0:
                continue
            mask = F.adaptive_max_pool2d(region, s.shape[-2:])
            diff = (attention_map(s) - attention_map(t.detach())).pow(2) * mask
            terms.append(diff.sum() / mask.sum().clamp_min(1.0) * s.shape[-1] * s.shape[-2])
        return torch.stack(terms).mean() if terms else region.sum() * 0.0
