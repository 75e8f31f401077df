"""Model space: resampling to a fixed spacing, HU windowing, and a lung mask from HU.

Every scan is resampled to ``cache.spacing_zyx`` (default 1.25 x 0.75 x 0.75 mm) before
patches are cut or a network sees it, so k adjacent slices always span the same
millimetres whatever the scanner did. The network input is HU clipped to
``cache.window`` (default -1000..400 HU, lung + soft tissue) and scaled to [0, 1].
"""
from __future__ import annotations

import cc3d
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from src.data.geometry import Geometry

AIR_HU = -1000.0
BODY_HU = -500.0             # soft tissue and bone; lung parenchyma and air lie below
LUNG_MEDIAN_HU = -950.0      # parenchyma's median is ~-850 (severe emphysema ~-920); room air ~-1000
AIR_MEDIAN_HU = -975.0       # room air even inside the body's outline (e.g. under a back joined to the table)
MIN_LUNG_AREA_CM2 = 10.0     # a lung's cross-section: the size floor of a thin slab of slices


def resampled_geometry(geometry: Geometry, spacing_zyx) -> Geometry:
    """Same origin and direction; spacing changed; size keeps the physical extent."""
    spacing_xyz = tuple(float(s) for s in np.asarray(spacing_zyx, dtype=float)[::-1])
    extent = np.asarray(geometry.size_xyz) * np.asarray(geometry.spacing_xyz)
    size = tuple(int(max(1, round(e / s))) for e, s in zip(extent, spacing_xyz))
    return Geometry(geometry.origin_xyz, spacing_xyz, geometry.direction, size)


def resample(array: np.ndarray, source: Geometry, target: Geometry, kind: str = "linear",
             default: float = 0.0) -> np.ndarray:
    """Resample a (z, y, x) array from one grid to another (kind: linear | nearest)."""
    interpolator = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}[kind]
    image = source.apply_to(sitk.GetImageFromArray(array))
    reference = target.apply_to(sitk.Image(list(target.size_xyz), image.GetPixelID()))
    out = sitk.Resample(image, reference, sitk.Transform(), interpolator, float(default))
    return sitk.GetArrayFromImage(out)


def resample_labels(labels: np.ndarray, source: Geometry, target: Geometry) -> np.ndarray:
    """Label volume onto another grid: each label's binary mask is resampled linearly inside
    its own bounding box and kept where > 0.5 - smooth edges, no label mixing, and fast
    because nodules are small (ITK's label-Gaussian interpolator takes ~10 s per CT)."""
    out = np.zeros(target.shape_zyx, dtype=labels.dtype)
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        lo = np.array([s.start for s in box]) - 1
        hi = np.array([s.stop for s in box]) + 1
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])], float)
        tv = target.world_to_voxel(source.voxel_to_world(corners))
        t_lo = np.maximum(np.floor(tv.min(0)).astype(int), 0)
        t_hi = np.minimum(np.ceil(tv.max(0)).astype(int) + 1, target.shape_zyx)
        if np.any(t_hi <= t_lo):
            continue
        src = np.zeros(hi - lo, dtype=np.float32)
        s_lo, s_hi = np.maximum(lo, 0), np.minimum(hi, labels.shape)
        src[tuple(slice(a - o, b - o) for a, b, o in zip(s_lo, s_hi, lo))] = \
            labels[tuple(slice(a, b) for a, b in zip(s_lo, s_hi))] == label
        part = resample(src, source.crop(lo, hi - lo), target.crop(t_lo, t_hi - t_lo), "linear")
        region = out[tuple(slice(a, b) for a, b in zip(t_lo, t_hi))]
        region[part > 0.5] = label
    return out


def to_model_space(image: np.ndarray, geometry: Geometry, spacing_zyx,
                   hu_clip: tuple[float, float], target: Geometry | None = None) -> tuple[np.ndarray, Geometry]:
    """HU volume -> (int16 HU at model spacing, clipped to ``hu_clip``; its geometry).
    ``target``: only this part of the model-space grid (a crop; each voxel is computed
    alone, so a crop equals the same part of the whole)."""
    target = target or resampled_geometry(geometry, spacing_zyx)
    clipped = np.clip(image, *hu_clip).astype(np.float32)
    out = resample(clipped, geometry, target, "linear", default=hu_clip[0])
    return np.rint(out).astype(np.int16), target


def normalise(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """HU -> float32 in [0, 1] over the window; the network's only view of intensities."""
    lo, hi = float(window[0]), float(window[1])  # numpy scalars would promote to float64
    return ((np.clip(hu.astype(np.float32), lo, hi) - lo) / (hi - lo)).astype(np.float32, copy=False)


PROMPT_SCALE_MM = 10.0   # the prompt saturates 10 mm inside and outside the sphere's surface
NO_PROMPT = 0.0          # the prompt channel where no coordinates are given


def prompt_channel(dist_mm: np.ndarray | None, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The coordinates as a network input: signed distance (mm) to the coarse sphere's
    surface, negative inside, mapped to [-1, 1] (+1 deep inside, 0 on the surface, -1 far
    outside). ``None`` (no coordinates: whole-scan mode) is ``NO_PROMPT`` everywhere, of
    ``shape``. Bounded and in mm, so it means the same at any diameter and spacing."""
    if dist_mm is None:
        return np.full(shape, NO_PROMPT, dtype=np.float32)
    return np.clip(-np.asarray(dist_mm, dtype=np.float32) / PROMPT_SCALE_MM, -1.0, 1.0)


def _between(mask: np.ndarray, axis: int) -> np.ndarray:
    """Voxels lying between the first and the last True of their line along ``axis``."""
    return np.logical_or.accumulate(mask, axis=axis) & \
        np.flip(np.logical_or.accumulate(np.flip(mask, axis), axis=axis), axis)


def lung_mask_from_hu(hu: np.ndarray, geometry: Geometry, threshold_hu: float = -400.0,
                      work_spacing_mm: float = 2.0, closing_mm: float = 10.0,
                      min_volume_ml: float = 50.0) -> np.ndarray:
    """Lungs from HU alone, for scans without a lung mask (LUNA16 ships seg-lungs).

    Works at ~2 mm on air-like components (< ``threshold_hu``) of lung size. The body is
    the largest soft-tissue component; its outline, per slice, is every voxel between two
    body voxels of one row or column. A component inside the outline and off the image
    border is a lung. One on the border but inside the outline (a tight field of view) is a
    lung unless its median HU is room air's (< -975). One reaching out of the outline (room
    air, or lungs seen through a field of view inside the chest) is a lung only if its
    median is parenchyma's (>= -950: a very emphysematous lung is missed there). Trachea
    and main bronchi stay with the lungs they join. The lungs are closed with a ~1 cm ball
    (pleural nodules stay inside), their holes filled per slice, returned on the input grid.
    """
    coarse = resampled_geometry(geometry, (work_spacing_mm,) * 3)
    small = resample(hu.astype(np.float32), geometry, coarse, "linear", default=AIR_HU)
    # The body: its outline tells room air from lungs, which both touch a tight FOV's border.
    body = cc3d.largest_k(small > BODY_HU, k=1, connectivity=6) > 0
    outline = _between(body, 1) | _between(body, 2)
    air = small < threshold_hu
    labels = cc3d.connected_components(air, connectivity=6)
    n = int(labels.max())
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    reaches_out = np.zeros(n + 1, bool)
    reaches_out[labels[air & ~outline]] = True
    border = np.zeros(n + 1, bool)
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        border[edge] = True
    voxel_ml = work_spacing_mm ** 3 / 1000.0
    # A scan of a few slices holds only a thin slab of lung: the size floor follows its depth.
    depth_cm = small.shape[0] * work_spacing_mm / 10.0
    floor_ml = min(min_volume_ml, MIN_LUNG_AREA_CM2 * depth_cm)
    keep = np.zeros(n + 1, bool)
    boxes = ndimage.find_objects(labels)
    for label in np.flatnonzero(sizes * voxel_ml >= floor_ml):
        if label == 0:
            continue
        if not (reaches_out[label] or border[label]):
            keep[label] = True
            continue
        box = boxes[label - 1]
        median = float(np.median(small[box][labels[box] == label]))
        keep[label] = median >= (LUNG_MEDIAN_HU if reaches_out[label] else AIR_MEDIAN_HU)
    lungs = keep[labels]
    radius = max(1, int(round(closing_mm / 2 / work_spacing_mm)))
    ball = ndimage.generate_binary_structure(3, 1)
    ball = ndimage.iterate_structure(ball, radius)
    lungs = ndimage.binary_closing(np.pad(lungs, radius), ball)[radius:-radius, radius:-radius, radius:-radius]
    lungs = np.stack([ndimage.binary_fill_holes(s) for s in lungs])
    # The coarse grid can stop up to ~1 working voxel short of the input's last voxels (its
    # size is rounded): repeat its edge voxels once, or those input voxels would come back empty.
    edged = coarse.crop((-1, -1, -1), np.asarray(lungs.shape) + 2)
    return resample(np.pad(lungs, 1, mode="edge").astype(np.uint8), edged, geometry, "nearest").astype(bool)
