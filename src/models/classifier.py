"""The false-positive-reduction classifiers, and where their inputs lie around a candidate.

Two kinds, chosen by ``fpr.model.arch``:

* ``MultiView`` - as Setio et al. (2016), a candidate is seen through orthogonal 2.5D views
  (axial, coronal, sagittal stacks of ``k`` adjacent slices through it); one timm encoder
  embeds each view and the concatenated embeddings give one logit (late fusion). Input
  (N, 3, k, S, S).
* ``Cube3D`` - a small 3D CNN (MONAI's ``Classifier``: strided residual conv units, then a
  linear layer) on the whole S^3 cube around the candidate. Input (N, 1, S, S, S).

Each model carries ``offsets``: where its input voxels lie, in voxels (z, y, x) from the
candidate, shape (groups, a, b, c, 3). Training samples them from augmented cached cubes
(:func:`sample_input`), validation from the cubes as they are (:func:`classifier_input`),
inference from the scan (``src.data.candidates.cut_inputs``): the same points everywhere.
Inputs are normalised HU; output logits (N, 1).
"""
from __future__ import annotations

import math

import numpy as np
import timm
import torch
import torch.nn.functional as F
from monai.networks.nets import Classifier
from torch import nn

from src.data.preprocess import normalise

N_VIEWS = 3
CLASSIFIERS = ("MultiView", "Cube3D")       # fpr.model.arch values that build a classifier
CUBE_CHANNELS = (16, 32, 64, 128)     # 0.58 M parameters at stride 2 each: a small 3D CNN


def _axis(n: int) -> np.ndarray:
    return np.arange(n) - (n - 1) / 2


def view_offsets(size: int, k: int) -> np.ndarray:
    """(3, k, size, size, 3): the axial (z; y, x), coronal (y; z, x) and sagittal (x; z, y)
    stacks of ``k`` slices, ``size`` pixels square, centred on the candidate."""
    a, b, c = np.meshgrid(_axis(k), _axis(size), _axis(size), indexing="ij")   # slice, row, column
    return np.stack([np.stack([a, b, c], -1), np.stack([b, a, c], -1), np.stack([b, c, a], -1)])


def cube_offsets(size: int) -> np.ndarray:
    """(1, size, size, size, 3): the cube of side ``size`` centred on the candidate."""
    return np.stack(np.meshgrid(_axis(size), _axis(size), _axis(size), indexing="ij"), -1)[None]


def _prior_bias(layer: nn.Linear, head_prior: float) -> None:
    if head_prior > 0:   # start at the candidates' base rate (RetinaNet's prior init)
        nn.init.constant_(layer.bias, math.log(head_prior / (1 - head_prior)))


class MultiViewClassifier(nn.Module):
    def __init__(self, encoder: str, in_channels: int, size: int, head_prior: float = 0.0):
        super().__init__()
        self.encoder = timm.create_model(encoder.removeprefix("tu-"),   # accept smp's timm prefix
                                         pretrained=False, in_chans=in_channels, num_classes=0)
        width = getattr(self.encoder, "head_hidden_size", None) or self.encoder.num_features   # pooled output
        self.head = nn.Linear(N_VIEWS * width, 1)
        _prior_bias(self.head, head_prior)
        self.offsets = view_offsets(size, in_channels)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        n, v = views.shape[:2]
        features = self.encoder(views.flatten(0, 1))            # (N * 3, F)
        return self.head(features.reshape(n, v * features.shape[-1]))


class CubeClassifier(nn.Module):
    def __init__(self, size: int, head_prior: float = 0.0):
        super().__init__()
        self.net = Classifier(in_shape=(1, size, size, size), classes=1, channels=CUBE_CHANNELS,
                              strides=(2,) * len(CUBE_CHANNELS), num_res_units=1, norm="batch")
        _prior_bias([m for m in self.net.modules() if isinstance(m, nn.Linear)][-1], head_prior)
        self.offsets = cube_offsets(size)

    def forward(self, cube: torch.Tensor) -> torch.Tensor:
        return self.net(cube)


def sample_input(cubes: torch.Tensor, affines: torch.Tensor, offsets: np.ndarray) -> torch.Tensor:
    """A classifier's input from each cube after an affine map of the cube's normalised
    (x, y, z) coordinates (``affines``: (N, 3, 4), input = A @ output + t), trilinear, 0
    outside: (N, *offsets.shape[:-1]). The training augmentation, in one ``grid_sample``."""
    n, side = cubes.shape[0], cubes.shape[-1]
    # voxel offsets -> grid_sample's normalised (x, y, z) of voxel centres (align_corners=False)
    points = (2 * torch.as_tensor(offsets, dtype=cubes.dtype, device=cubes.device) / side).flip(-1)
    grid = points.reshape(1, -1, 3) @ affines[:, :, :3].transpose(1, 2) + affines[:, None, :, 3]
    groups, rest = offsets.shape[0], offsets.shape[1:-1]
    out = F.grid_sample(cubes[:, None], grid.reshape(n, groups * rest[0], *rest[1:], 3), mode="bilinear",
                        padding_mode="zeros", align_corners=False)
    return out.reshape(n, groups, *rest)


def classifier_input(cubes_hu: np.ndarray | torch.Tensor, window: tuple[float, float],
                     offsets: np.ndarray) -> torch.Tensor:
    """HU cubes -> a classifier's normalised input (no augmentation), float32."""
    hu = cubes_hu.numpy() if torch.is_tensor(cubes_hu) else cubes_hu
    cubes = torch.from_numpy(normalise(hu, window))
    return sample_input(cubes, torch.eye(3, 4).expand(len(cubes), 3, 4), offsets)
