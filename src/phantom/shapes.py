"""Geometry every part of the built-in chest is drawn with.

Arrays and voxel coordinates are (z, y, x); "volume mm" is index * spacing per axis. The
anatomy frame is (c, v, u): c is depth below the lung apex in mm (caudal positive), v and u
are mm from the body centre (v posterior, u toward the patient's left), divided by the
per-scan scale of the chest. Image x grows toward the patient's left (right lung at low x)
and the slice index z toward the head, as in LIDC and LUNA16 volumes.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

GAUSS_TRUNCATE = 3.0                 # gaussian kernels end at this many sigma
SMALL_GRID = 64                      # grids up to this many points skip the per-shape boxes

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Grid:
    shape: tuple[int, int, int]
    spacing: np.ndarray                 # (3,) mm, (z, y, x)

    def axis_mm(self, axis: int) -> np.ndarray:
        return np.arange(self.shape[axis], dtype=np.float64) * self.spacing[axis]

    def box_around(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> Box | None:
        """Voxel box covering [lo_mm, hi_mm] (volume mm), cut to the grid; None if empty."""
        lo = np.maximum(np.floor(np.asarray(lo_mm) / self.spacing).astype(int), 0)
        hi = np.minimum(np.ceil(np.asarray(hi_mm) / self.spacing).astype(int) + 1, self.shape)
        if np.any(hi <= lo):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))

    def box_mm(self, box: Box) -> list[np.ndarray]:
        """Volume mm of the voxel centres along each axis of a box."""
        return [np.arange(box[k].start, box[k].stop) * self.spacing[k] for k in range(3)]


@dataclass(frozen=True)
class Frame:
    """Places the anatomy frame (c, v, u) in volume mm (z, y, x)."""
    grid: Grid
    scale: float                        # anatomy mm -> volume mm in-plane
    centre_x: float                     # body centre, mm right of the image centre
    centre_y: float                     # body centre, mm below the image centre
    c_top: float                        # depth below the lung apex of the top (last) slice

    @property
    def _mid(self) -> np.ndarray:
        return (np.asarray(self.grid.shape) - 1) * self.grid.spacing

    def u_of_x(self, x_mm):
        return (x_mm - self._mid[2] / 2 - self.centre_x) / self.scale

    def v_of_y(self, y_mm):
        return (y_mm - self._mid[1] / 2 - self.centre_y) / self.scale

    def c_of_z(self, z_mm):
        return self.c_top + self._mid[0] - z_mm

    def to_mm(self, cvu: np.ndarray) -> np.ndarray:
        """Anatomy (..., 3) (c, v, u) -> volume mm (..., 3) (z, y, x)."""
        c, v, u = cvu[..., 0], cvu[..., 1], cvu[..., 2]
        return np.stack([self.c_top + self._mid[0] - c,
                         v * self.scale + self.centre_y + self._mid[1] / 2,
                         u * self.scale + self.centre_x + self._mid[2] / 2], axis=-1)



@dataclass(frozen=True)
class Ellipse:
    cu: float
    cv: float
    a: float                            # half-axis along the rotated u direction
    b: float
    angle: float = 0.0                  # rad, rotation of the a-axis from +u toward +v

    def level(self, u, v):
        """Approximate signed distance (mm), negative inside."""
        du, dv = u - self.cu, v - self.cv
        if self.angle:
            cs, sn = float(np.cos(self.angle)), float(np.sin(self.angle))
            du, dv = du * cs + dv * sn, dv * cs - du * sn
        du = du / self.a
        dv = dv / self.b
        return (np.sqrt(du * du + dv * dv) - 1.0) * min(self.a, self.b)

    def bounds(self) -> tuple[float, float, float, float]:
        h = max(self.a, self.b)
        return self.cu - h, self.cu + h, self.cv - h, self.cv + h


@dataclass(frozen=True)
class Capsule:
    u0: float
    v0: float
    u1: float
    v1: float
    r: float

    def level(self, u, v):
        eu, ev = self.u1 - self.u0, self.v1 - self.v0
        wu, wv = u - self.u0, v - self.v0
        t = np.clip((wu * eu + wv * ev) / max(eu * eu + ev * ev, 1e-9), 0.0, 1.0)
        return np.sqrt((wu - t * eu) ** 2 + (wv - t * ev) ** 2) - self.r

    def bounds(self) -> tuple[float, float, float, float]:
        return (min(self.u0, self.u1) - self.r, max(self.u0, self.u1) + self.r,
                min(self.v0, self.v1) - self.r, max(self.v0, self.v1) + self.r)


Shape = Ellipse | Capsule


def grid_level(shape: Shape, u: np.ndarray, v: np.ndarray, pad: float) -> tuple[slice, slice, np.ndarray] | None:
    """The shape's level on the part of the grid (sorted 1-D axes u, v) within pad mm of it."""
    u0, u1, v0, v1 = shape.bounds()
    iu = slice(int(np.searchsorted(u, u0 - pad)), int(np.searchsorted(u, u1 + pad)))
    iv = slice(int(np.searchsorted(v, v0 - pad)), int(np.searchsorted(v, v1 + pad)))
    if iu.stop <= iu.start or iv.stop <= iv.start:
        return None
    return iv, iu, shape.level(u[None, iu], v[iv, None]).astype(np.float32)


def union_level(shapes: list[Shape], u: np.ndarray, v: np.ndarray, pad: float) -> np.ndarray:
    """Minimum of the shapes' levels where within pad mm of one of them, +pad elsewhere."""
    out = np.full((v.size, u.size), pad, dtype=np.float32)
    if out.size <= SMALL_GRID:                                     # boxes would cost more than they save
        for shape in shapes:
            np.minimum(out, shape.level(u[None, :], v[:, None]), out=out)
        return out
    for shape in shapes:
        hit = grid_level(shape, u, v, pad)
        if hit is not None:
            iv, iu, level = hit
            np.minimum(out[iv, iu], level, out=out[iv, iu])
    return out


def ball_box(centre_mm: np.ndarray, radius_mm: float, grid: Grid) -> tuple[Box, np.ndarray] | None:
    """Voxel box around a ball and the squared distance (mm^2) of its voxels to the centre."""
    box = grid.box_around(np.asarray(centre_mm) - radius_mm, np.asarray(centre_mm) + radius_mm)
    if box is None:
        return None
    axes = [a - c for a, c in zip(grid.box_mm(box), centre_mm)]
    d2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    return box, d2


def box_gap(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Per voxel, the gap (mm) between it and the nearest voxel of ``mask``, voxels taken as
    boxes: 0 for the mask and its 26 neighbours, so that a thick slice's next slice counts
    as touching. (The distance to the mask grown by one voxel, measured between centres.)"""
    grown = ndimage.binary_dilation(mask, structure=np.ones((3, 3, 3), dtype=bool))
    return ndimage.distance_transform_edt(~grown, sampling=spacing)


def overlap(offset, crop_shape, lo, hi) -> tuple[Box, Box] | None:
    """Where a crop placed with its [0, 0, 0] at ``offset`` meets the box [lo, hi) (voxels):
    the slices into the crop and into the box; None if they do not meet."""
    offset = np.asarray(offset, dtype=int)
    a = np.maximum(offset, lo)
    b = np.minimum(offset + np.asarray(crop_shape), hi)
    if np.any(b <= a):
        return None
    return (tuple(slice(int(x - o), int(y - o)) for x, y, o in zip(a, b, offset)),
            tuple(slice(int(x - s), int(y - s)) for x, y, s in zip(a, b, np.broadcast_to(lo, 3))))


def placed_box(mask: np.ndarray, offset, margin_vox, shape) -> tuple[Box, np.ndarray]:
    """The volume box around a crop's mask placed with its [0, 0, 0] at ``offset`` (grown by
    ``margin_vox``, cut to the volume ``shape``), and the mask seen through that box."""
    idx = np.argwhere(mask)
    lo = np.maximum(np.asarray(offset) + idx.min(axis=0) - margin_vox, 0)
    hi = np.minimum(np.asarray(offset) + idx.max(axis=0) + 1 + margin_vox, shape)
    local = np.zeros(tuple(hi - lo), dtype=bool)
    hit = overlap(offset, mask.shape, lo, hi)
    if hit is not None:
        local[hit[1]] = mask[hit[0]]
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), local


def normalise(d: np.ndarray) -> np.ndarray:
    return d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-9)


def random_unit(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """Directions uniform on the sphere: (3,) or (n, 3)."""
    return normalise(rng.normal(0.0, 1.0, 3 if n is None else (n, 3)))


def smooth_noise(shape: tuple[int, ...], sigma, rng: np.random.Generator) -> np.ndarray:
    """Unit-sd smooth random field (sigma in voxels, per axis or one for all)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / max(float(field.std()), 1e-6)


def signed_distance(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Signed distance (mm) to the mask's surface: negative inside, half a voxel at the
    boundary voxels on either side, so that the level 0 runs between voxel centres."""
    if not mask.any():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    return (outside - inside).astype(np.float32) + np.where(mask, 0.5, -0.5).astype(np.float32) * float(np.min(spacing))


@dataclass
class Tubes:
    """Tapered tube segments in volume mm: p0, p1 (n, 3) (z, y, x), radii r0, r1 (n,)."""
    p0: np.ndarray
    p1: np.ndarray
    r0: np.ndarray
    r1: np.ndarray

    @staticmethod
    def empty() -> "Tubes":
        return Tubes(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0))

    @staticmethod
    def concat(parts: list["Tubes"]) -> "Tubes":
        return Tubes(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("p0", "p1", "r0", "r1")))

    def __len__(self) -> int:
        return len(self.r0)

    def distance(self, point_mm: np.ndarray) -> np.ndarray:
        """(n,) distance (mm) from a point to each tube's surface (negative inside)."""
        e = self.p1 - self.p0
        w = point_mm - self.p0
        t = np.clip(np.einsum("ij,ij->i", w, e) / np.maximum(np.einsum("ij,ij->i", e, e), 1e-9), 0.0, 1.0)
        gap = np.linalg.norm(w - t[:, None] * e, axis=1)
        return gap - (self.r0 + t * (self.r1 - self.r0))

    def occupancy(self, grid: Grid, extra_mm: np.ndarray | float = 0.0) -> Iterator[tuple[Box, np.ndarray]]:
        """Per tube (radius + extra_mm): its voxel box and its occupancy there, a linear ramp
        one pixel wide across the surface (partial volume)."""
        r0, r1 = self.r0 + extra_mm, self.r1 + extra_mm
        soft = float(np.mean(grid.spacing[1:]))
        reach = np.maximum(r0, r1)[:, None] + soft
        lo = np.maximum(np.floor((np.minimum(self.p0, self.p1) - reach) / grid.spacing).astype(int), 0)
        hi = np.minimum(np.ceil((np.maximum(self.p0, self.p1) + reach) / grid.spacing).astype(int) + 1, grid.shape)
        axes = [grid.axis_mm(k).astype(np.float32) for k in range(3)]
        shape = [(-1, 1, 1), (1, -1, 1), (1, 1, -1)]
        for i in np.nonzero(np.all(hi > lo, axis=1))[0]:
            box = (slice(lo[i, 0], hi[i, 0]), slice(lo[i, 1], hi[i, 1]), slice(lo[i, 2], hi[i, 2]))
            e = self.p1[i] - self.p0[i]
            ee = max(float(e @ e), 1e-9)
            w = [axes[k][box[k]] - np.float32(self.p0[i, k]) for k in range(3)]      # voxel - p0, per axis
            # q: position along the axis in units of its length; d^2 = |w|^2 + ee * t * (t - 2 q), t = clip(q).
            q = sum((w[k] * np.float32(e[k] / ee)).reshape(shape[k]) for k in range(3))
            w2 = sum((w[k] * w[k]).reshape(shape[k]) for k in range(3))
            t = np.clip(q, 0.0, 1.0)
            q *= -2.0
            q += t
            q *= t
            q *= np.float32(ee)
            q += w2
            np.maximum(q, 0.0, out=q)
            dist = np.sqrt(q, out=q)
            # occupancy = clip((radius(t) - dist) / soft + 0.5, 0, 1)
            t *= np.float32((r1[i] - r0[i]) / soft)
            t += np.float32(r0[i] / soft + 0.5)
            dist *= np.float32(1.0 / soft)
            t -= dist
            yield box, np.clip(t, 0.0, 1.0, out=t)
