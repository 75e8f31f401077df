"""Image geometry and the one place where world and voxel coordinates meet.

Conventions used everywhere in this project:
  * numpy arrays are indexed (z, y, x);
  * SimpleITK sizes, spacings, origins and points are (x, y, z);
  * world coordinates are millimetres in the scanner (patient) frame, given as (x, y, z)
    because that is how LUNA16's ``coordX,coordY,coordZ`` and ITK points are written;
  * voxel coordinates returned here are (z, y, x) floats, so they index arrays directly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Geometry:
    origin_xyz: tuple[float, float, float]
    spacing_xyz: tuple[float, float, float]
    direction: tuple[float, ...]           # 3x3 row-major, as ITK stores it
    size_xyz: tuple[int, int, int]

    # --------------------------------------------------------------- constructors
    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Geometry":
        return cls(tuple(float(v) for v in image.GetOrigin()),
                   tuple(float(v) for v in image.GetSpacing()),
                   tuple(float(v) for v in image.GetDirection()),
                   tuple(int(v) for v in image.GetSize()))

    @classmethod
    def axis_aligned(cls, origin_xyz, spacing_xyz, shape_zyx) -> "Geometry":
        return cls(tuple(float(v) for v in origin_xyz), tuple(float(v) for v in spacing_xyz),
                   (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
                   tuple(int(v) for v in shape_zyx[::-1]))

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetOrigin(self.origin_xyz)
        image.SetSpacing(self.spacing_xyz)
        image.SetDirection(self.direction)
        return image

    # --------------------------------------------------------------- views in array order
    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return self.size_xyz[::-1]

    @property
    def spacing_zyx(self) -> np.ndarray:
        return np.asarray(self.spacing_xyz[::-1], dtype=float)

    @property
    def _matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    # --------------------------------------------------------------- conversions
    def world_to_voxel(self, world_xyz) -> np.ndarray:
        """World mm (x, y, z), shape (..., 3) -> continuous voxel index (z, y, x)."""
        world = np.asarray(world_xyz, dtype=float)
        rel = world - np.asarray(self.origin_xyz)
        index_xyz = (rel @ np.linalg.inv(self._matrix).T) / np.asarray(self.spacing_xyz)
        return index_xyz[..., ::-1]

    def voxel_to_world(self, voxel_zyx) -> np.ndarray:
        """Continuous voxel index (z, y, x), shape (..., 3) -> world mm (x, y, z)."""
        index_xyz = np.asarray(voxel_zyx, dtype=float)[..., ::-1]
        return (index_xyz * np.asarray(self.spacing_xyz)) @ self._matrix.T + np.asarray(self.origin_xyz)

    def contains(self, voxel_zyx) -> bool:
        """Whether a continuous (z, y, x) index lies inside the volume (voxel centres +-0.5)."""
        v = np.asarray(voxel_zyx, dtype=float)
        return bool(np.all(v >= -0.5) and np.all(v <= np.asarray(self.shape_zyx) - 0.5))

    def crop(self, start_zyx, shape_zyx) -> "Geometry":
        """The sub-grid starting at voxel ``start_zyx`` (may lie outside) with ``shape_zyx``."""
        origin = self.voxel_to_world(np.asarray(start_zyx, dtype=float))
        return Geometry(tuple(float(v) for v in origin), self.spacing_xyz, self.direction,
                        tuple(int(v) for v in np.asarray(shape_zyx)[::-1]))

    def same_grid(self, other: "Geometry", tol: float = 1e-3) -> bool:
        return (self.size_xyz == other.size_xyz
                and np.allclose(self.origin_xyz, other.origin_xyz, atol=tol)
                and np.allclose(self.spacing_xyz, other.spacing_xyz, atol=tol)
                and np.allclose(self.direction, other.direction, atol=tol))


def sphere_diameter_mm(volume_mm3: float) -> float:
    """The diameter of the sphere of this volume (a mask's equivalent diameter)."""
    return float((6.0 * volume_mm3 / np.pi) ** (1.0 / 3.0))
