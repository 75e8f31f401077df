"""Segment a nodule from its coordinates alone: the one truth-free path.

Validation, out-of-fold scores, the hold-out leaderboard, pseudo-label quality and
``infer.py``'s coordinates mode all call :func:`segment_nodule`, so every Dice the project
reports is the same measurement. For a centre (world mm) and a diameter:

1. the *window*: model-space slices through the coarse sphere + ``infer.roi_margin_mm``, and
   a square in-plane field (at least one patch, a multiple of 32 px) around the centre;
2. the segmenter (a network, or a baseline) gives probabilities on those slices;
3. the *prior*: nothing beyond the coarse sphere + ``infer.prior_margin_mm``
   (``infer.coarse_prior``), which is what the coordinates say;
4. the probabilities are resampled linearly onto the scan's own grid, thresholded, and the
   connected component at the centre (or the nearest one within the radius) is the nodule;
   where there is none, the given sphere is (flagged ``fallback``), as half-max does.

Nothing here sees a truth mask. A :class:`ModelVolume` may be a crop of a scan
(:meth:`ModelVolume.around`): it keeps the full volume's geometry and its own offset, so a
nodule segmented in a crop is bit-identical to one segmented in the whole scan.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from src.config import CacheConfig, InferConfig
from src.data.classical import component_at
from src.data.geometry import Geometry
from src.data.patches import crop, model_lung_mask, sphere_distance
from src.data.preprocess import resample, resampled_geometry, to_model_space
from src.data.scan import Scan
from src.models.factory import STRIDE
from src.predict.predictor import Predictor


@dataclass
class ModelVolume:
    """A scan at model spacing, or a crop of one, ready for 2.5D prediction."""
    image: np.ndarray                  # int16 HU, clipped; the crop starting at `offset`
    geometry: Geometry                 # of the *full* model-space volume
    native: Geometry                   # the scan's own grid
    cfg: CacheConfig
    offset: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=int))
    full_shape: tuple[int, int, int] | None = None
    scan: Scan | None = None           # the scan itself (whole volumes only)
    lung: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.full_shape = tuple(self.full_shape or self.image.shape)

    def stacks(self, z_indices, y0: int, x0: int, size: int | tuple[int, int]) -> np.ndarray:
        """(len(z), H, W) HU in full-volume indices (``size`` = H = W, or (H, W)): z clamped
        to the volume (edge slices repeat), in-plane outside the field of view air."""
        size_yx = (size, size) if np.isscalar(size) else tuple(size)
        z = np.clip(np.asarray(z_indices), 0, self.full_shape[0] - 1) - self.offset[0]
        return crop(self.image, z, y0 - int(self.offset[1]), x0 - int(self.offset[2]), size_yx,
                    int(self.cfg.hu_clip[0]))

    def around(self, lo_zyx, hi_zyx) -> "ModelVolume":
        """The crop [lo, hi) (full-volume indices, clipped to it); keeps the full geometry."""
        lo = np.maximum(np.asarray(lo_zyx, dtype=int), 0)
        hi = np.minimum(np.asarray(hi_zyx, dtype=int), self.full_shape)
        image = self.image[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, self.offset))].copy()
        return replace(self, image=image, offset=lo, scan=None, lung=None)

    def lung_mask(self) -> np.ndarray:
        """LUNA16 seg-lungs when the scan has one, else computed from HU (cached)."""
        if self.scan is None:
            raise ValueError("a cropped model volume has no lung mask")
        if self.lung is None:
            self.lung = model_lung_mask(self.scan, self.image, self.geometry)
        return self.lung


def to_model_volume(scan: Scan, cfg: CacheConfig) -> ModelVolume:
    image, geometry = to_model_space(scan.image, scan.geometry, cfg.spacing_zyx, cfg.hu_clip)
    return ModelVolume(image, geometry, scan.geometry, cfg, scan=scan)


def model_volume_grid(scan: Scan, cfg: CacheConfig) -> ModelVolume:
    """The model-space grid of a scan without its pixels (windows can be planned on it)."""
    geometry = resampled_geometry(scan.geometry, cfg.spacing_zyx)
    return ModelVolume(np.zeros((0, 0, 0), np.int16), geometry, scan.geometry, cfg, full_shape=geometry.shape_zyx)


def model_volume_crop(scan: Scan, cfg: CacheConfig, lo_zyx, hi_zyx) -> ModelVolume:
    """Only the model-space crop [lo, hi) (clipped to the volume), resampled from the scan:
    the same voxels as that part of :func:`to_model_volume`, for a fraction of the cost."""
    grid = model_volume_grid(scan, cfg)
    lo = np.maximum(np.asarray(lo_zyx, dtype=int), 0)
    hi = np.minimum(np.asarray(hi_zyx, dtype=int), grid.full_shape)
    image, _ = to_model_space(scan.image, scan.geometry, cfg.spacing_zyx, cfg.hu_clip,
                              target=grid.geometry.crop(lo, hi - lo))
    return replace(grid, image=image, offset=lo)


def stacks_from_volume(volume: np.ndarray, k: int) -> np.ndarray:
    """(Z + k - 1, H, W) -> (Z, k, H, W): the 2.5D stack of every inner slice (a view)."""
    return np.lib.stride_tricks.sliding_window_view(volume, k, axis=0).transpose(0, 3, 1, 2)


# ----------------------------------------------------------------------------- segmenters
# Each maps a window to probabilities on its slices: image (Z + k - 1, S, S) HU with k//2
# context slices on each side; dist (Z, S, S) mm to the coarse sphere surface (negative
# inside) -> prob (Z, S, S) in [0, 1]. Segmenters that need no training (half-max in
# src.data.classical, the rest in src.evaluation.baselines) go through the same path.


class NetworkSegmenter:
    """The networks on the window; prompted ones are told the coordinates' sphere, unless
    ``prompt`` is off (the map they give in whole-scan search, where nothing is given).
    ``sphere_fallback`` (default: ``prompt``; whole-scan search has no sphere to fall back
    to) off scores the networks' own masks: what validation and pseudo-label quality judge."""

    def __init__(self, predictor: Predictor, k: int, prompt: bool = True, sphere_fallback: bool | None = None):
        self.predictor, self.k, self.prompt = predictor, k, prompt
        self.sphere_fallback = prompt if sphere_fallback is None else sphere_fallback

    def __call__(self, image: np.ndarray, dist: np.ndarray) -> np.ndarray:
        return self.predictor.prob(stacks_from_volume(image, self.k), dist if self.prompt else None)


# ----------------------------------------------------------------------------- the path


@dataclass(frozen=True)
class Window:
    """Model-space slices z_lo..z_hi (inclusive) and the square [y0, y0+size) x [x0, x0+size)."""
    z_lo: int
    z_hi: int
    y0: int
    x0: int
    size: int

    def geometry(self, model: Geometry) -> Geometry:
        return model.crop((self.z_lo, self.y0, self.x0), (self.z_hi - self.z_lo + 1, self.size, self.size))


def nodule_window(mv: ModelVolume, centre_xyz, diameter_mm: float, margin_mm: float) -> Window:
    """The window around a coarse sphere (centre + diameter + margin); no truth used."""
    centre = mv.geometry.world_to_voxel(centre_xyz)
    reach = (diameter_mm / 2.0 + margin_mm) / mv.geometry.spacing_zyx
    z_lo = max(int(np.floor(centre[0] - reach[0])), 0)
    z_hi = min(int(np.ceil(centre[0] + reach[0])), mv.full_shape[0] - 1)
    size = max(mv.cfg.patch_size, int(np.ceil(2 * reach[1:].max() / STRIDE)) * STRIDE)
    # floor(c + 0.5), not round(): Python's banker's rounding would differ between crops
    y0, x0 = (int(np.floor(c + 0.5)) - size // 2 for c in centre[1:])
    return Window(z_lo, z_hi, y0, x0, size)


def native_box(window: Window, model: Geometry, native: Geometry) -> tuple[slice, slice, slice]:
    """The scan's voxels that the window covers (clipped to the scan)."""
    shape = (window.z_hi - window.z_lo + 1, window.size, window.size)
    corners = np.array([[a, b, c] for a in (0, shape[0] - 1) for b in (0, shape[1] - 1) for c in (0, shape[2] - 1)])
    at = native.world_to_voxel(window.geometry(model).voxel_to_world(corners))
    lo = np.maximum(np.floor(at.min(0)).astype(int), 0)
    hi = np.minimum(np.ceil(at.max(0)).astype(int) + 1, native.shape_zyx)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def model_box_for(window: Window, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Model-space [lo, hi) that the window reads, context slices included (for crops)."""
    h = k // 2
    return (np.array([window.z_lo - h, window.y0, window.x0]),
            np.array([window.z_hi + h + 1, window.y0 + window.size, window.x0 + window.size]))


def segment_at(prob: np.ndarray, centre_zyx, radius_mm: float, spacing_zyx, threshold: float,
               fallback: bool = True) -> tuple[np.ndarray, bool]:
    """The nodule at a given centre: thresholded probability, the component at the centre
    (or the nearest within the radius) -> (mask, False). Where nothing lies above threshold
    there, the given sphere -> (sphere, True) if ``fallback``: the coordinates say a nodule
    is there, and an empty mask shows nothing and scores 0 (half-max, where the nodule does not
    stand out, returns nothing and takes this fallback too)."""
    mask = component_at(prob >= threshold, centre_zyx, spacing_zyx, max_distance_mm=radius_mm)
    if mask.any() or not fallback:
        return mask, False
    sphere = sphere_distance(np.asarray(centre_zyx, float), [radius_mm], spacing_zyx, np.arange(prob.shape[0]),
                             0, 0, prob.shape[1:]) <= 0
    # a sphere thinner than the slices may hold no voxel centre: the centre's voxel, at least
    sphere[tuple(int(np.clip(np.floor(c + 0.5), 0, n - 1)) for c, n in zip(centre_zyx, prob.shape))] = True
    return sphere, True


@dataclass
class Segmented:
    box: tuple[slice, slice, slice]      # the scan's voxels the window covers
    prob: np.ndarray                     # float32 in box, on the scan's grid
    centre_zyx: np.ndarray               # the given centre, voxel index into box
    radius_mm: float
    mask: np.ndarray                     # bool in box: the nodule at the threshold used
    fallback: bool = False               # nothing above threshold: the mask is the given sphere


def segment_nodule(mv: ModelVolume, centre_xyz, diameter_mm: float, segmenter, cfg: InferConfig,
                   threshold: float) -> Segmented:
    """The nodule at a coordinate, on the scan's own grid (see the module docstring)."""
    window = nodule_window(mv, centre_xyz, diameter_mm, cfg.roi_margin_mm)
    h = mv.cfg.k_slices // 2
    image = mv.stacks(np.arange(window.z_lo - h, window.z_hi + h + 1), window.y0, window.x0, window.size)
    radius = diameter_mm / 2.0
    dist = sphere_distance(mv.geometry.world_to_voxel(centre_xyz), [radius], mv.geometry.spacing_zyx,
                           np.arange(window.z_lo, window.z_hi + 1), window.y0, window.x0, (window.size,) * 2)
    prob = segmenter(image, dist).astype(np.float32)
    if cfg.coarse_prior:
        prob[dist > cfg.prior_margin_mm] = 0.0

    box = native_box(window, mv.geometry, mv.native)
    lo = np.array([s.start for s in box])
    hi = np.array([s.stop for s in box])
    native_prob = resample(prob, window.geometry(mv.geometry), mv.native.crop(lo, hi - lo), "linear", default=0.0)
    centre = mv.native.world_to_voxel(centre_xyz) - lo
    mask, fallback = segment_at(native_prob, centre, radius, mv.native.spacing_zyx, threshold,
                                segmenter.sphere_fallback)
    return Segmented(box, native_prob, centre, radius, mask, fallback)
