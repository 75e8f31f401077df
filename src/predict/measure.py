"""What a radiologist reads off a nodule mask: its long axis, a solid / part-solid /
ground-glass estimate and the Lung-RADS size category. Used by the nodule report and the
DICOM SR."""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from src.data.geometry import Geometry, sphere_diameter_mm

# Attenuation of the nodule's own voxels (HU): a solid core is soft tissue, ground glass
# lies between lung (~-850) and tissue. The thresholds follow the common CAD convention:
# a voxel above SOLID_HU is solid; a nodule is solid when most of it is, ground glass when
# almost none of it is.
SOLID_HU = -300.0
SOLID_FRACTION, GGN_FRACTION = 0.8, 0.05


def long_axis_mm(mask: np.ndarray, geometry: Geometry) -> float:
    """The longest distance between two voxel centres of a mask, in mm (0 for an empty mask):
    the 3D long axis, measured on the mask's convex hull."""
    zyx = np.argwhere(mask)
    if len(zyx) == 0:
        return 0.0
    points = geometry.voxel_to_world(zyx.astype(float)).reshape(-1, 3)
    if len(points) > 4:
        try:
            points = points[ConvexHull(points).vertices]
        except QhullError:    # flat (one slice): all points, the hull is not needed to be exact
            pass
    return float(pdist(points).max()) if len(points) > 1 else 0.0


def texture_estimate(hu_values: np.ndarray) -> str:
    """solid, part-solid or ground-glass from the HU of the nodule's voxels."""
    if len(hu_values) == 0:
        return "unknown"
    solid = float((hu_values > SOLID_HU).mean())
    if solid >= SOLID_FRACTION:
        return "solid"
    return "ground-glass" if solid <= GGN_FRACTION else "part-solid"


def lung_rads_size_category(volume_mm3: float, texture: str) -> str:
    """Lung-RADS v2022 category of a baseline screening nodule by size alone (no growth, no
    morphology, the solid part of a part-solid nodule not measured), from its volume with
    the guideline's volume equivalents (6 / 8 / 15 / 30 mm = 113 / 268 / 1767 / 14137 mm3):
    2, 3, 4A or 4B."""
    if not np.isfinite(volume_mm3):
        return ""
    if texture == "ground-glass":
        return "2" if volume_mm3 < 14137 else "3"
    if texture == "part-solid":
        return "2" if volume_mm3 < 113 else "3"
    if volume_mm3 < 113:
        return "2"
    if volume_mm3 < 268:
        return "3"
    return "4A" if volume_mm3 < 1767 else "4B"


def measure_findings(image_hu: np.ndarray, labels: np.ndarray, geometry: Geometry,
                     nodule_ids) -> dict[int, dict]:
    """nodule id -> long axis (mm), texture estimate and Lung-RADS size category, and volume
    (mm3), equivalent diameter (mm) and mean HU, from each label's voxels (a finding
    without a mask gets no size and no category)."""
    voxel_mm3 = float(np.prod(geometry.spacing_zyx))
    out = {}
    boxes = ndimage.find_objects(labels)
    for nid in nodule_ids:
        box = boxes[nid - 1] if 0 < nid <= len(boxes) else None
        if box is None:
            out[int(nid)] = dict(long_axis_mm=np.nan, texture_estimate="unknown", lung_rads="")
            continue
        mask = labels[box] == nid
        texture = texture_estimate(image_hu[box][mask])
        long_axis = long_axis_mm(mask, geometry.crop(tuple(s.start for s in box), mask.shape))
        volume = float(mask.sum()) * voxel_mm3
        out[int(nid)] = dict(long_axis_mm=long_axis, texture_estimate=texture,
                             lung_rads=lung_rads_size_category(volume, texture), volume_mm3=volume,
                             diameter_mm=sphere_diameter_mm(volume), mean_hu=float(image_hu[box][mask].mean()))
    return out
