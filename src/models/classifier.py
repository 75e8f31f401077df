"""The false-positive-reduction classifier: one timm encoder shared by three views.

As Setio et al. (2016), a candidate is seen through orthogonal 2.5D views (axial, coronal,
sagittal stacks of adjacent slices through it); the same encoder embeds each view and the
concatenated embeddings give one logit (late fusion). Input (N, 3, k, S, S) normalised;
output logits (N, 1).
"""
from __future__ import annotations

import math

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from src.data.preprocess import normalise

N_VIEWS = 3


class MultiViewClassifier(nn.Module):
    def __init__(self, encoder: str, in_channels: int, head_prior: float = 0.0):
        super().__init__()
        name = encoder[3:] if encoder.startswith("tu-") else encoder   # accept smp's timm prefix
        self.encoder = timm.create_model(name, pretrained=False, in_chans=in_channels, num_classes=0)
        width = getattr(self.encoder, "head_hidden_size", None) or self.encoder.num_features   # pooled output
        self.head = nn.Linear(N_VIEWS * width, 1)
        if head_prior > 0:   # start at the candidates' base rate (RetinaNet's prior init)
            nn.init.constant_(self.head.bias, math.log(head_prior / (1 - head_prior)))

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        n, v = views.shape[:2]
        features = self.encoder(views.flatten(0, 1))            # (N * 3, F)
        return self.head(features.reshape(n, v * features.shape[-1]))


def views(cubes: torch.Tensor, size: int, k: int) -> torch.Tensor:
    """(N, D, D, D) cubes -> (N, 3, k, size, size): the central ``k`` axial, coronal and
    sagittal slices of the central ``size``-cube."""
    a = (cubes.shape[-1] - size) // 2
    c = cubes[:, a:a + size, a:a + size, a:a + size]
    m = (size - k) // 2
    axial = c[:, m:m + k]
    coronal = c[:, :, m:m + k].permute(0, 2, 1, 3)
    sagittal = c[:, :, :, m:m + k].permute(0, 3, 1, 2)
    return torch.stack([axial, coronal, sagittal], dim=1)


def classifier_input(cubes_hu: np.ndarray | torch.Tensor, window: tuple[float, float], size: int,
                     k: int) -> torch.Tensor:
    """HU cubes -> the classifier's normalised views (N, 3, k, size, size), float32."""
    hu = cubes_hu.numpy() if torch.is_tensor(cubes_hu) else cubes_hu
    return views(torch.from_numpy(normalise(hu, window)), size, k)


def view_points(side: int, size: int, k: int) -> torch.Tensor:
    """(3, k, size, size, 3): where the voxels of :func:`views` lie in a ``side``-cube, in
    ``grid_sample``'s normalised (x, y, z) (voxel centres, ``align_corners=False``)."""
    v, t = torch.arange(size) - (size - 1) / 2, torch.arange(k) - (k - 1) / 2
    a, b, c = torch.meshgrid(t, v, v, indexing="ij")
    zyx = torch.stack([torch.stack([a, b, c], -1), torch.stack([b, a, c], -1), torch.stack([b, c, a], -1)])
    return (2 * zyx / side).flip(-1)


def sample_views(cubes: torch.Tensor, affines: torch.Tensor, size: int, k: int) -> torch.Tensor:
    """The views of each cube after an affine map of its normalised (x, y, z) coordinates
    (``affines``: (N, 3, 4), input = A @ output + t), trilinear, air (0) outside: the
    training augmentation, in one ``grid_sample`` for the batch."""
    n, side = cubes.shape[0], cubes.shape[-1]
    points = view_points(side, size, k).to(cubes).reshape(1, -1, 3)
    grid = points @ affines[:, :, :3].transpose(1, 2) + affines[:, None, :, 3]
    out = F.grid_sample(cubes[:, None], grid.reshape(n, N_VIEWS * k, size, size, 3), mode="bilinear",
                        padding_mode="zeros", align_corners=False)
    return out.reshape(n, N_VIEWS, k, size, size)
