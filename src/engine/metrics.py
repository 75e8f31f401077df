"""Per-nodule segmentation metrics (numpy/scipy): Dice, IoU, sensitivity, precision, HD95.

All take binary 3D arrays on the same grid and the grid's spacing (z, y, x) in mm.
Empty-vs-empty counts as a perfect match; empty-vs-nonempty as Dice 0 and HD95 NaN.
"""
from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage

SIZE_BINS_MM = (3.0, 6.0, 10.0, 20.0)          # 3-6, 6-10, 10-20, >=20 mm
SIZE_BIN_LABELS = ("3-6", "6-10", "10-20", ">=20")


def size_bin(diameter_mm: float) -> str:
    if diameter_mm < SIZE_BINS_MM[0]:
        return "<3"
    idx = int(np.searchsorted(SIZE_BINS_MM, diameter_mm, side="right")) - 1
    return SIZE_BIN_LABELS[idx]


def texture_class(texture: float) -> str:
    """LIDC texture rating -> ground glass (<=2), part solid (<=3.5), solid."""
    if not np.isfinite(texture):
        return "unknown"
    return "ground-glass" if texture <= 2 else "part-solid" if texture <= 3.5 else "solid"


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred.astype(bool), truth.astype(bool)
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else float(2.0 * (p & t).sum() / denom)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing_zyx) -> float:
    """95th percentile of the symmetric surface distance, mm (NaN if either is empty)."""
    p, t = pred.astype(bool), truth.astype(bool)
    if not p.any() or not t.any():
        return float("nan")
    sp, st = _surface(p), _surface(t)
    dt_t = ndimage.distance_transform_edt(~st, sampling=spacing_zyx)
    dt_p = ndimage.distance_transform_edt(~sp, sampling=spacing_zyx)
    return float(np.percentile(np.concatenate([dt_t[sp], dt_p[st]]), 95))


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray, spacing_zyx) -> dict[str, float]:
    p, t = pred.astype(bool), truth.astype(bool)
    tp = float((p & t).sum())
    fp, fn = float((p & ~t).sum()), float((~p & t).sum())
    return dict(
        dice=dice(p, t),
        iou=1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn),
        sensitivity=1.0 if tp + fn == 0 else tp / (tp + fn),
        precision=(1.0 if tp + fn == 0 else 0.0) if tp + fp == 0 else tp / (tp + fp),
        hd95_mm=hd95(p, t, spacing_zyx),
    )


def inter_reader_dice(reader_bits: np.ndarray, n_readers: int) -> float:
    """Mean pairwise Dice between the readers (bit r = reader r) of one nodule; NaN if < 2."""
    masks = [(reader_bits >> r) & 1 for r in range(n_readers)]
    masks = [m.astype(bool) for m in masks if m.any()]
    if len(masks) < 2:
        return float("nan")
    return float(np.mean([dice(a, b) for a, b in itertools.combinations(masks, 2)]))


def component_at(mask: np.ndarray, centre_zyx, spacing_zyx=(1.0, 1.0, 1.0),
                 max_distance_mm: float | None = None) -> np.ndarray:
    """The connected component of ``mask`` containing ``centre_zyx``, else the one nearest
    to it (within ``max_distance_mm`` if given); empty if there is none."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    idx = tuple(int(np.clip(round(c), 0, s - 1)) for c, s in zip(centre_zyx, mask.shape))
    label = labels[idx]
    if label == 0:
        dist, (iz, iy, ix) = ndimage.distance_transform_edt(labels == 0, sampling=spacing_zyx,
                                                            return_indices=True)
        if max_distance_mm is not None and dist[idx] > max_distance_mm:
            return np.zeros_like(mask, dtype=bool)
        label = labels[iz[idx], iy[idx], ix[idx]]
    return labels == label
