"""Mode 1 - segment nodules at given coordinates, in the scan's own geometry.

For each (centre, diameter): a model-space ROI around the coarse sphere (+ margin) is
predicted slice by slice as 2.5D stacks, the probabilities are resampled back onto the
native grid, thresholded, and the connected component at the centre is kept. The same
function scores the hold-out leaderboard and serves ``infer.py``, so both report the same
numbers. Reference "segmenters" that need no training (the coarse sphere, an HU threshold
inside it) go through the same path.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from src.config import CacheConfig, InferConfig
from src.data.geometry import Geometry
from src.data.patches import crop, model_lung_mask, sphere_distance
from src.data.preprocess import resample, to_model_space
from src.data.scan import Scan
from src.engine.evaluate import roi_centre, segment_at, stacks_from_volume
from src.infer.predictor import Predictor


@dataclass
class ModelVolume:
    """A scan at model spacing, ready for 2.5D prediction."""
    scan: Scan
    image: np.ndarray        # int16 HU, clipped
    geometry: Geometry
    cfg: CacheConfig
    lung: np.ndarray | None = None

    def lung_mask(self) -> np.ndarray:
        """LUNA16 seg-lungs when the scan has one, else computed from HU (cached)."""
        if self.lung is None:
            self.lung = model_lung_mask(self.scan, self.image, self.geometry)
        return self.lung

    def native_lung_mask(self) -> np.ndarray:
        """The lung mask on the scan's own grid."""
        if self.scan.lung_mask is not None:
            return self.scan.lung_mask
        return resample(self.lung_mask().astype(np.uint8), self.geometry, self.scan.geometry, "nearest").astype(bool)


def to_model_volume(scan: Scan, cfg: CacheConfig) -> ModelVolume:
    image, geometry = to_model_space(scan.image, scan.geometry, cfg.spacing_zyx, cfg.hu_clip)
    return ModelVolume(scan, image, geometry, cfg)


# ----------------------------------------------------------------------------- segmenters
# Each maps a model-space ROI to probabilities on its predicted slices:
#   image (Z + k - 1, S, S) HU with k//2 context slices each side; dist (Z, S, S) mm to the
#   coarse sphere surface (negative inside) -> prob (Z, S, S) in [0, 1].


class NetworkSegmenter:
    def __init__(self, predictor: Predictor, k: int):
        self.predictor, self.k = predictor, k

    def __call__(self, image: np.ndarray, dist: np.ndarray) -> np.ndarray:
        return self.predictor.prob(stacks_from_volume(image, self.k))


class SphereSegmenter:
    """The coarse label itself taken as the mask."""

    def __call__(self, image: np.ndarray, dist: np.ndarray) -> np.ndarray:
        return (dist <= 0).astype(np.float32)


class ThresholdSegmenter:
    """Classical baseline: HU >= threshold inside the coarse sphere (+ margin)."""

    def __init__(self, threshold_hu: float, k: int, margin_mm: float):
        self.threshold, self.h, self.margin = threshold_hu, k // 2, margin_mm

    def __call__(self, image: np.ndarray, dist: np.ndarray) -> np.ndarray:
        centre = image[self.h:image.shape[0] - self.h]
        return ((centre >= self.threshold) & (dist <= self.margin)).astype(np.float32)


def fit_threshold(cache, nodules, k: int, margin_mm: float, candidates=range(-800, 101, 50)) -> tuple[float, float]:
    """The HU threshold with the best mean per-nodule Dice on (training) cache ROIs."""
    from src.engine.metrics import dice

    spacing = np.asarray(cache.attrs["spacing_zyx"], dtype=float)
    rois = []
    for nod in nodules.itertuples(index=False):
        roi = cache.roi(nod.roi)
        dist = ndimage.distance_transform_edt(roi["coarse"] == 0, sampling=spacing)
        centre = roi_centre(nod)
        rois.append((roi, dist, centre, nod.diameter_mm / 2))
    best = (float("nan"), -1.0)
    for t in candidates:
        seg = ThresholdSegmenter(t, k, margin_mm)
        scores = [dice(segment_at(seg(r["image"], d), c, rad, spacing, 0.5), r["fine"] > 0) for r, d, c, rad in rois]
        if np.mean(scores) > best[1]:
            best = (float(t), float(np.mean(scores)))
    return best


# ----------------------------------------------------------------------------- mode 1


@dataclass
class Segmented:
    box: tuple[slice, slice, slice]      # native voxel box of the ROI
    mask: np.ndarray                     # bool, native, inside box: the nodule
    prob: np.ndarray                     # float32, native, inside box


def roi_window(mv: ModelVolume, centre_zyx: np.ndarray, radius_mm: float, margin_mm: float):
    """Model-space ROI (z_lo, z_hi, y0, x0, size) around a coarse sphere, no truth used."""
    spacing = mv.geometry.spacing_zyx
    reach = (radius_mm + margin_mm) / spacing
    z_lo = max(int(np.floor(centre_zyx[0] - reach[0])), 0)
    z_hi = min(int(np.ceil(centre_zyx[0] + reach[0])), mv.image.shape[0] - 1)
    size = max(mv.cfg.patch_size, int(np.ceil(2 * reach[1:].max() / 32.0)) * 32)
    return z_lo, z_hi, int(round(centre_zyx[1])) - size // 2, int(round(centre_zyx[2])) - size // 2, size


def segment_nodule(mv: ModelVolume, centre_xyz, diameter_mm: float, segmenter, cfg: InferConfig) -> Segmented:
    """``cfg``: threshold, ROI margin, and whether the coarse prior (sphere + margin) bounds
    the result - it is the same information the coordinates give, for every segmenter."""
    geo, native = mv.geometry, mv.scan.geometry
    centre = geo.world_to_voxel(centre_xyz)
    radius = diameter_mm / 2.0
    z_lo, z_hi, y0, x0, size = roi_window(mv, centre, radius, cfg.roi_margin_mm)
    h = mv.cfg.k_slices // 2
    image = crop(mv.image, np.arange(z_lo - h, z_hi + h + 1), y0, x0, (size, size), int(mv.cfg.hu_clip[0]))
    dist = sphere_distance(centre, [radius], geo.spacing_zyx, np.arange(z_lo, z_hi + 1), y0, x0, (size, size))
    prob = segmenter(image, dist).astype(np.float32)
    if cfg.coarse_prior:
        prob[dist > cfg.prior_margin_mm] = 0.0
    roi_geo = geo.crop((z_lo, y0, x0), prob.shape)

    # Native voxel box covering the ROI, then linear resampling of the probabilities onto it.
    corners = np.array([[a, b, c] for a in (0, prob.shape[0] - 1) for b in (0, size - 1) for c in (0, size - 1)])
    native_corners = native.world_to_voxel(roi_geo.voxel_to_world(corners))
    lo = np.maximum(np.floor(native_corners.min(0)).astype(int), 0)
    hi = np.minimum(np.ceil(native_corners.max(0)).astype(int) + 1, native.shape_zyx)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    native_prob = resample(prob, roi_geo, native.crop(lo, hi - lo), "linear", default=0.0)
    mask = segment_at(native_prob, native.world_to_voxel(centre_xyz) - lo, radius, native.spacing_zyx, cfg.threshold)
    return Segmented(box, mask, native_prob)
