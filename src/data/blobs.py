"""Classical nodule candidates: bright blobs of the CT itself, found without training.

A nodule is a compact bright blob in dark lung; the scale-normalised Laplacian of Gaussian
(Lindeberg) peaks at its centre, at a scale near ``radius / sqrt(3)`` in 3D. So:

1. the lungs' box is resampled to ``BLOB_SPACING_MM`` isotropic (LoG needs one scale in
   mm along every axis; model space has thicker slices than pixels);
2. at each of ``SIGMAS_MM``, the response ``-sigma^2 * LoG`` of the HU image (the HU
   contrast of a blob of that scale, roughly) and its local maxima
   (``skimage.feature.peak_local_max``);
3. each maximum is weighed by its *blobness*: LoG also answers along vessels (a tube is
   curved across, flat along), so the Hessian of the smoothed image there gives
   ``|lambda_min| / |lambda_max|`` when all three eigenvalues are negative (1 for a ball, 0
   for a tube or a sheet; Li et al. 2003);
4. the maxima of every scale by response x blobness, a weaker one dropped within a stronger
   one's radius (non-maximum suppression).

All of it inside the *closed* lungs, where everything else is set to lung (pleural nodules
become whole balls, the chest wall gives none). This is the second candidate source of
whole-scan detection, merged with the network map's maxima (``src.predict.detect``): it
responds to nodules that a map may miss. Alone, ranked by its own response, it is the classical detection baseline of
``bench/detection.py``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.feature import peak_local_max

from src.data.geometry import Geometry

BLOB_SPACING_MM = 1.25
# sphere diameter ~ 2 * sqrt(3) * sigma: 3.5 to 26 mm, LUNA16's nodules (>= 3 mm)
SIGMAS_MM = (1.0, 1.5, 2.3, 3.5, 5.0, 7.5)
MIN_SEPARATION_MM = 4.0     # maxima closer than this are one blob
CLOSING_MM, COARSE_MM = 10.0, 2.5   # the lungs closed by a 10 mm ball, on a 2.5 mm grid
MAXIMA_PER_SCALE = 5000     # maxima weighed per scale: a vessel tree has thousands
BLOB_COLUMNS = ["coordX", "coordY", "coordZ", "blob_response", "diameter_mm"]


def hessians_at(smoothed: np.ndarray, at: np.ndarray) -> np.ndarray:
    """(N, 3, 3) Hessians of a smoothed volume at integer voxels (central differences;
    voxels on the border use their neighbours inside). Only at the maxima: skimage's
    ``hessian_matrix`` computes six full volumes per scale for the few thousand voxels needed."""
    p = np.clip(at, 1, np.asarray(smoothed.shape) - 2)
    eye = np.eye(3, dtype=int)
    h = np.empty((len(p), 3, 3), dtype=np.float64)
    centre = smoothed[tuple(p.T)]
    for i in range(3):
        h[:, i, i] = smoothed[tuple((p + eye[i]).T)] - 2 * centre + smoothed[tuple((p - eye[i]).T)]
        for j in range(i + 1, 3):
            d = eye[i] + eye[j]
            e = eye[i] - eye[j]
            h[:, i, j] = h[:, j, i] = (smoothed[tuple((p + d).T)] + smoothed[tuple((p - d).T)]
                                       - smoothed[tuple((p + e).T)] - smoothed[tuple((p - e).T)]) / 4
    return h


def blobness(hessians: np.ndarray) -> np.ndarray:
    """|lambda_min| / |lambda_max| when all three eigenvalues are negative (a bright ball:
    ~1), else 0 (a tube, a sheet, a dip)."""
    eig = np.linalg.eigvalsh(hessians)            # ascending: eig[:, 0] the most negative
    return np.where(eig[:, 2] < 0, eig[:, 2] / np.minimum(eig[:, 0], -1e-9), 0.0)


def scale_maxima(iso: np.ndarray, inside: np.ndarray, sigma_vox: float, separation: int,
                 min_response: float) -> tuple[np.ndarray, np.ndarray]:
    """(voxels, response x blobness) of the scale-normalised LoG's maxima at one scale."""
    smoothed = ndimage.gaussian_filter(iso, sigma_vox, mode="nearest")
    log = ndimage.laplace(smoothed, mode="nearest")
    log *= -sigma_vox ** 2
    at = peak_local_max(log, min_distance=separation, threshold_abs=min_response, labels=inside,
                        num_peaks=MAXIMA_PER_SCALE, exclude_border=False)
    return at, log[tuple(at.T)] * blobness(hessians_at(smoothed, at))


def closed_lungs(lung: np.ndarray, spacing_mm: float) -> np.ndarray:
    """The lungs closed by a ``CLOSING_MM`` ball (at ``COARSE_MM``, through distance maps):
    a nodule on the pleura, which an HU lung mask leaves out as chest wall, falls inside, as
    in the closed or convex-hull lung masks of LUNA16 systems."""
    step = max(round(COARSE_MM / spacing_mm), 1)
    coarse = lung[::step, ::step, ::step]
    pad = int(np.ceil(CLOSING_MM / (step * spacing_mm))) + 1
    grown = ndimage.distance_transform_edt(~np.pad(coarse, pad)) * step * spacing_mm <= CLOSING_MM
    closed = (ndimage.distance_transform_edt(grown) * step * spacing_mm > CLOSING_MM)[pad:-pad, pad:-pad, pad:-pad]
    up = np.repeat(np.repeat(np.repeat(closed, step, 0), step, 1), step, 2)[:lung.shape[0], :lung.shape[1], :lung.shape[2]]
    return up | lung


def find_blobs(image_hu: np.ndarray, geometry: Geometry, lung: np.ndarray, max_blobs: int,
               min_response: float) -> pd.DataFrame:
    """The ``max_blobs`` strongest blobs whose centre lies in the closed lungs (``lung``: a
    mask on the image's grid), response x blobness at least ``min_response`` (HU), strongest
    first: world centre (mm), that value (``blob_response``) and the diameter its scale
    implies. Outside the closed lungs the image is set to the lungs' median HU, so the chest
    wall and mediastinum give no blobs and a pleural nodule is a whole ball."""
    if not lung.any() or max_blobs == 0:
        return pd.DataFrame(columns=BLOB_COLUMNS)
    margin = np.ceil(CLOSING_MM / np.asarray(geometry.spacing_zyx)).astype(int)
    extent = [np.flatnonzero(lung.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1))]
    lo = np.maximum(np.array([e[0] for e in extent]) - margin, 0)
    hi = np.minimum(np.array([e[-1] + 1 for e in extent]) + margin, lung.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    zoom = np.asarray(geometry.spacing_zyx, dtype=float) / BLOB_SPACING_MM
    iso = ndimage.zoom(image_hu[box].astype(np.float32), zoom, order=1)
    iso_lung = ndimage.zoom(lung[box].astype(np.uint8), zoom, order=0).astype(bool)
    inside = closed_lungs(iso_lung, BLOB_SPACING_MM)
    iso[~inside] = np.median(iso[iso_lung])
    separation = max(round(MIN_SEPARATION_MM / BLOB_SPACING_MM), 1)
    found = [(at, score, np.full(len(at), sigma)) for sigma in SIGMAS_MM
             for at, score in [scale_maxima(iso, inside.astype(np.uint8), sigma / BLOB_SPACING_MM, separation,
                                            min_response)]]
    at, score, sigma = (np.concatenate(parts) for parts in zip(*found))
    keep = non_maximum_suppression(at * BLOB_SPACING_MM, score, sigma, min_response, max_blobs)
    if len(keep) == 0:
        return pd.DataFrame(columns=BLOB_COLUMNS)
    # iso voxel -> the image's voxel (zoom maps voxel centres i -> i * zoom, up to rounding)
    voxel = at[keep] * (hi - lo - 1) / np.maximum(np.asarray(iso.shape) - 1, 1) + lo
    table = pd.DataFrame(geometry.voxel_to_world(voxel).reshape(-1, 3), columns=["coordX", "coordY", "coordZ"])
    table["blob_response"] = score[keep].astype(float)
    table["diameter_mm"] = 2 * np.sqrt(3) * sigma[keep]
    return table


def non_maximum_suppression(points_mm: np.ndarray, score: np.ndarray, sigma_mm: np.ndarray, min_score: float,
                            max_kept: int) -> np.ndarray:
    """Indices of the best-scoring points, strongest first, each farther than
    ``MIN_SEPARATION_MM`` and than a kept blob's radius (sqrt(3) sigma) from every kept one."""
    kept: list[int] = []
    for i in np.argsort(-score, kind="stable"):
        if score[i] < min_score or len(kept) == max_kept:
            break
        if kept:
            d = np.linalg.norm(points_mm[kept] - points_mm[i], axis=1)
            if (d <= np.maximum(MIN_SEPARATION_MM, np.sqrt(3) * sigma_mm[kept])).any():
                continue
        kept.append(int(i))
    return np.array(kept, dtype=int)
