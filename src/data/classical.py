"""Classical, training-free segmentation of a nodule from its coordinates.

Partial volume puts a nodule's edge where the intensity is half-way between the nodule
and the lung around it. So, inside the coarse sphere (centre + diameter) + a margin:

* the nodule's level is the median HU near the given centre (within ``core_fraction`` x
  the radius), the background's the median HU in a shell just outside the sphere;
* voxels above ``background + level x (nodule - background)`` are nodule, and the
  connected component at the centre is kept.

This adapts to each nodule's own density (ground glass at -650 HU as well as solid nodules
at 0 HU), unlike one HU threshold for all. It is used three times: as a reference
segmenter that every learned model is compared with (hold-out leaderboard, quality
benchmark); as ``infer.py --model half-max``, for coordinates without a trained network;
and as the *coarse prior* that turns a coarse
nodule's coordinates into a pseudo-mask for training (``src.data.patches``). Where the
nodule hardly stands out from its background (``min_contrast_hu``) it returns None: no
prior rather than a wrong one.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

SHELL_MM = (2.0, 6.0)        # background: this far outside the sphere surface
MIN_CONTRAST_HU = 100.0      # ground glass stands ~200 HU above lung; below this, no prior
BINARY_LEVEL = 0.5           # binary masks, resampled linearly to a scan's grid: half-way is the edge


def component_at(mask: np.ndarray, centre_zyx, spacing_zyx=(1.0, 1.0, 1.0),
                 max_distance_mm: float | None = None) -> np.ndarray:
    """The connected component (26-connected) of ``mask`` containing ``centre_zyx``, else the
    one nearest to it (within ``max_distance_mm`` if given); empty if there is none."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    idx = tuple(int(np.clip(np.floor(c + 0.5), 0, s - 1)) for c, s in zip(centre_zyx, mask.shape))
    label = labels[idx]
    if label == 0:
        dist, (iz, iy, ix) = ndimage.distance_transform_edt(labels == 0, sampling=spacing_zyx,
                                                            return_indices=True)
        if max_distance_mm is not None and dist[idx] > max_distance_mm:
            return np.zeros_like(mask, dtype=bool)
        label = labels[iz[idx], iy[idx], ix[idx]]
    return labels == label


def half_max_threshold(hu: np.ndarray, dist_mm: np.ndarray, radius_mm: float, core_fraction: float = 0.4,
                       level: float = 0.5, min_contrast_hu: float = MIN_CONTRAST_HU) -> float | None:
    """The HU level of a nodule's edge: ``level`` of the way from the background to the
    nodule (medians), or None when the nodule does not stand out. ``dist_mm`` is the signed
    distance to the sphere surface (negative inside), on the same voxels as ``hu``."""
    core = hu[dist_mm <= -(1.0 - core_fraction) * radius_mm]
    if core.size == 0:   # a sphere smaller than a voxel: its brightest voxels stand for the core
        inside = hu[dist_mm <= 0]
        core = np.sort(inside)[-max(1, inside.size // 4):] if inside.size else hu[dist_mm <= dist_mm.min()]
    shell = hu[(dist_mm > SHELL_MM[0]) & (dist_mm <= SHELL_MM[1])]
    if shell.size == 0:
        return None
    nodule, background = float(np.median(core)), float(np.median(shell))
    if nodule - background < min_contrast_hu:
        return None
    return background + level * (nodule - background)


def half_max_mask(hu: np.ndarray, dist_mm: np.ndarray, radius_mm: float, margin_mm: float) -> np.ndarray | None:
    """Voxels at or above the nodule's half-max level inside the sphere + ``margin_mm``
    (no component selection), or None (see :func:`half_max_threshold`)."""
    level = half_max_threshold(hu, dist_mm, radius_mm)
    if level is None:
        return None
    return (hu >= level) & (dist_mm <= margin_mm)


class HalfMaxSegmenter:
    """:func:`half_max_mask` as a segmenter of the one scoring path (``src.predict.segment``):
    window image (Z + k - 1, S, S) HU and distance to the sphere (Z, S, S) mm -> 0/1 on the
    Z slices. Where the nodule does not stand out it returns nothing, so that the scoring
    path's fallback draws the given sphere and flags it (as for the networks)."""
    sphere_fallback = True

    def __init__(self, k: int, margin_mm: float):
        self.h, self.margin = k // 2, margin_mm

    def __call__(self, image: np.ndarray, dist: np.ndarray) -> np.ndarray:
        centre = image[self.h:image.shape[0] - self.h].astype(np.float32)
        radius = -float(dist.min())   # the sphere's depth on this grid (the window holds its centre)
        mask = half_max_mask(centre, dist, radius, self.margin)
        return np.zeros(dist.shape, np.float32) if mask is None else mask.astype(np.float32)
