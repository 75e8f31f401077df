"""2.5D training patches cut from a scan in model space.

A 2.5D patch is ``k`` adjacent axial slices (channels) of ``P x P`` pixels, centred on a
slice ``z``; its targets are the masks of slice ``z`` only. Near the volume's top and
bottom the slice index is clamped (edge slices repeat); outside the field of view the
image is padded with air.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from src.config import CacheConfig
from src.data.classical import SHELL_MM, component_at, half_max_mask
from src.data.geometry import Geometry
from src.data.preprocess import lung_mask_from_hu, resample, resample_labels, to_model_space
from src.data.scan import Nodule, Scan

DIST_UNITS_PER_MM = 4.0   # coarse_dist is stored as int8 quarter-millimetres (+-31.75 mm)


@dataclass
class ModelNodule:
    nodule: Nodule
    center_zyx: np.ndarray           # voxel (z, y, x) in model space
    radius_mm: float
    has_prior: bool = False          # the half-max prior found it (it stands out from the lung)


@dataclass
class ModelScan:
    """A scan resampled to ``cache.spacing_zyx``; all indices below are in this grid."""
    scan: Scan
    image: np.ndarray                # int16 HU, clipped to cache.hu_clip
    geometry: Geometry
    fine: np.ndarray | None          # uint16 labels (Nodule.fine_label), None if no mask
    lung: np.ndarray                 # bool
    nodules: list[ModelNodule]
    avoid_zyx_mm: np.ndarray         # (n, 4): centre (voxel) + radius (mm) of every finding
    prior: np.ndarray | None = None  # bool: every nodule's coarse prior (half-max pseudo-mask)


def model_lung_mask(scan: Scan, image: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The lungs in model space: the scan's own lung mask (LUNA16 seg-lungs) when it has one,
    else computed from the model-space HU image."""
    if scan.lung_mask is not None:
        return resample(scan.lung_mask.astype(np.uint8), scan.geometry, geometry, "nearest").astype(bool)
    return lung_mask_from_hu(image, geometry)


def to_model_scan(scan: Scan, cfg: CacheConfig) -> ModelScan:
    image, geometry = to_model_space(scan.image, scan.geometry, cfg.spacing_zyx, cfg.hu_clip)
    fine = None
    if scan.fine_mask is not None:
        fine = resample_labels(scan.fine_mask.astype(np.uint16), scan.geometry, geometry)
    lung = model_lung_mask(scan, image, geometry)
    nodules = [ModelNodule(n, geometry.world_to_voxel(n.center_xyz), n.diameter_mm / 2) for n in scan.nodules]
    findings = [(geometry.world_to_voxel(n.center_xyz), n.diameter_mm / 2) for n in scan.nodules]
    for x, y, z, d in scan.excluded_xyzd:
        findings.append((geometry.world_to_voxel((x, y, z)), (d if np.isfinite(d) else 6.0) / 2))
    avoid = np.array([[*c, r] for c, r in findings]).reshape(-1, 4)
    ms = ModelScan(scan, image, geometry, fine, lung, nodules, avoid)
    ms.prior = coarse_prior(ms, cfg.prior_margin_mm)
    return ms


def coarse_prior(ms: ModelScan, margin_mm: float) -> np.ndarray:
    """The half-max pseudo-mask of every nodule, from its coordinates and the image alone
    (``src.data.classical``); sets ``has_prior`` on the nodules it found."""
    prior = np.zeros(ms.image.shape, dtype=bool)
    spacing = ms.geometry.spacing_zyx
    for mn in ms.nodules:
        reach = (mn.radius_mm + SHELL_MM[1] + 1.0) / spacing
        lo = np.maximum(np.floor(mn.center_zyx - reach).astype(int), 0)
        hi = np.minimum(np.ceil(mn.center_zyx + reach).astype(int) + 1, ms.image.shape)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        dist = sphere_distance(mn.center_zyx, [mn.radius_mm], spacing, np.arange(lo[0], hi[0]), int(lo[1]),
                               int(lo[2]), (int(hi[1] - lo[1]), int(hi[2] - lo[2])))
        mask = half_max_mask(ms.image[box].astype(np.float32), dist, mn.radius_mm, margin_mm)
        if mask is None:
            continue
        mask = component_at(mask, mn.center_zyx - lo, spacing, max_distance_mm=mn.radius_mm)
        mn.has_prior = bool(mask.any())
        prior[box] |= mask
    return prior


# ----------------------------------------------------------------------------- cropping


def crop(volume: np.ndarray, z_indices, y0: int, x0: int, size_yx: tuple[int, int],
         pad_value) -> np.ndarray:
    """(len(z), H, W) crop with top-left (y0, x0); z clamped to the volume, y/x padded."""
    z = np.clip(np.asarray(z_indices), 0, volume.shape[0] - 1)
    h, w = size_yx
    out = np.full((len(z), h, w), pad_value, dtype=volume.dtype)
    ys, ye = max(y0, 0), min(y0 + h, volume.shape[1])
    xs, xe = max(x0, 0), min(x0 + w, volume.shape[2])
    if ys < ye and xs < xe:
        out[:, ys - y0:ye - y0, xs - x0:xe - x0] = volume[z, ys:ye, xs:xe]
    return out


def sphere_distance(centres_zyx: np.ndarray, radii_mm, spacing_zyx, z_indices,
                    y0: int, x0: int, size_yx: tuple[int, int], far_mm: float = 32.0) -> np.ndarray:
    """float32 (len(z), H, W): signed distance (mm) to the nearest coarse sphere surface,
    negative inside; ``far_mm`` where no sphere is nearer. ``<= 0`` is the coarse mask."""
    z = np.asarray(z_indices, dtype=float)[:, None, None]
    y = (np.arange(size_yx[0]) + y0)[None, :, None]
    x = (np.arange(size_yx[1]) + x0)[None, None, :]
    sz, sy, sx = spacing_zyx
    out = np.full((len(z), *size_yx), far_mm, dtype=np.float32)
    for (cz, cy, cx), r in zip(np.asarray(centres_zyx).reshape(-1, 3), np.ravel(radii_mm)):
        dz2 = ((z - cz) * sz) ** 2
        if np.sqrt(dz2.min()) - r > far_mm:
            continue
        dist = np.sqrt(dz2 + ((y - cy) * sy) ** 2 + ((x - cx) * sx) ** 2) - r
        np.minimum(out, dist, out=out)
    return out


def stack_at(ms: ModelScan, z: int, cy: int, cx: int, cfg: CacheConfig) -> dict[str, np.ndarray]:
    """One 2.5D training patch centred on (z, cy, cx): image (k,P,P), and for slice z:
    fine mask, coarse mask, coarse prior (half-max pseudo-mask), distance to the coarse
    spheres (int8, 0.25 mm units, rounded up so that ``coarse_dist <= 0`` is exactly the
    coarse mask)."""
    p, h = cfg.patch_size, cfg.k_slices // 2
    y0, x0 = cy - p // 2, cx - p // 2
    image = crop(ms.image, np.arange(z - h, z + h + 1), y0, x0, (p, p), int(cfg.hu_clip[0]))
    fine = (crop(ms.fine, [z], y0, x0, (p, p), 0)[0] > 0) if ms.fine is not None else np.zeros((p, p), bool)
    prior = crop(ms.prior, [z], y0, x0, (p, p), False)[0] if ms.prior is not None else np.zeros((p, p), bool)
    centres = np.array([n.center_zyx for n in ms.nodules]).reshape(-1, 3)
    radii = np.array([n.radius_mm for n in ms.nodules])
    dist = sphere_distance(centres, radii, ms.geometry.spacing_zyx, [z], y0, x0, (p, p))[0]
    return dict(image=image, fine=fine.astype(np.uint8), prior=prior.astype(np.uint8),
                coarse=(dist <= 0).astype(np.uint8),
                coarse_dist=np.clip(np.ceil(dist * DIST_UNITS_PER_MM), -127, 127).astype(np.int8))


# ----------------------------------------------------------------------------- sampling


def nodule_z_range(ms: ModelScan, mn: ModelNodule) -> tuple[int, int]:
    """Slices through a nodule: its coarse sphere, widened by its fine mask where known."""
    rz = mn.radius_mm / ms.geometry.spacing_zyx[0]
    lo, hi = int(np.ceil(mn.center_zyx[0] - rz)), int(np.floor(mn.center_zyx[0] + rz))
    if ms.fine is not None and mn.nodule.fine_label:
        zs = np.flatnonzero((ms.fine == mn.nodule.fine_label).any(axis=(1, 2)))
        if zs.size:
            lo, hi = min(lo, int(zs[0])), max(hi, int(zs[-1]))
    lo = max(lo, 0)
    hi = min(max(hi, lo), ms.image.shape[0] - 1)
    return lo, hi


def _far_from_findings(ms: ModelScan, zyx: np.ndarray, margin_mm: float) -> bool:
    if not len(ms.avoid_zyx_mm):
        return True
    d = np.linalg.norm((ms.avoid_zyx_mm[:, :3] - zyx) * ms.geometry.spacing_zyx, axis=1)
    return bool(np.all(d > ms.avoid_zyx_mm[:, 3] + margin_mm))


def sample_patch_centres(ms: ModelScan, cfg: CacheConfig, rng: np.random.Generator) -> list[dict]:
    """Centres (model voxels) and provenance of every patch to cut from one scan.

    Positives: every slice through each nodule, in-plane jitter up to ``jitter_px``.
    Negatives (``negatives_per_positive`` x positives): a ``hard_negative_fraction`` at
    vessel-like candidates, the rest at random lung voxels; all keep clear of findings.
    """
    shape = np.asarray(ms.image.shape)
    items: list[dict] = []
    for mn in ms.nodules:
        lo, hi = nodule_z_range(ms, mn)
        for z in range(lo, hi + 1):
            jy, jx = rng.integers(-cfg.jitter_px, cfg.jitter_px + 1, size=2)
            items.append(dict(kind="nodule", nodule=mn, z=z, y=int(round(mn.center_zyx[1])) + int(jy),
                              x=int(round(mn.center_zyx[2])) + int(jx)))
    n_neg = int(round(cfg.negatives_per_positive * max(len(items), 1)))
    candidates = ms.geometry.world_to_voxel(ms.scan.candidates_xyz).reshape(-1, 3)
    candidates = np.rint([c for c in candidates if ms.geometry.contains(c)]).astype(int).reshape(-1, 3)
    lung_voxels = np.flatnonzero(ms.lung)
    quota = {"hard": int(round(cfg.hard_negative_fraction * n_neg)) if len(candidates) else 0}
    quota["random"] = n_neg - quota["hard"]
    for kind, count in quota.items():
        made, tries = 0, 0
        while made < count and tries < 50 * count:
            tries += 1
            if kind == "hard":  # at a vessel-like candidate, jittered like the positives
                zyx = candidates[rng.integers(len(candidates))].copy()
                zyx[1:] += rng.integers(-cfg.jitter_px, cfg.jitter_px + 1, size=2)
            elif lung_voxels.size:
                zyx = np.array(np.unravel_index(lung_voxels[rng.integers(lung_voxels.size)], shape))
            else:
                break
            if _far_from_findings(ms, zyx, cfg.negative_margin_mm):
                items.append(dict(kind=kind, nodule=None, z=int(zyx[0]), y=int(zyx[1]), x=int(zyx[2])))
                made += 1
    return items
