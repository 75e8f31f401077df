"""The lungs: their outline in every slice, the parenchyma, where the chest sits on the grid,
and the lung-depth map that nodules and distractors are placed with.

* outline: the cavity minus the mediastinum, the vertebral body and the diaphragm domes,
  capped at the apex, hence D-shaped and concave medially, small at apex and base;
* parenchyma (~ -850 HU): denser posteriorly (gravity), a few slow waves, and in some scans
  a dependent subpleural density (hypoventilation) and emphysema (low-attenuation holes,
  more toward the apex);
* the chest is scaled so that the body fills the field of view as a reconstruction FOV
  does, with a random centre and a random height of the volume along the lungs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from src.phantom.body import (DOME_CENTRAL_DIP_MM, PLEURAL_GAP_MM, Anatomy, BodyPlane, BodySlice, body_plane,
                              body_slice, paint_body_slice)
from src.phantom.shapes import Frame, Grid, ball_box

RIGHT_LUNG, LEFT_LUNG, AIRWAY = 3, 4, 5      # LUNA16 seg-lungs labels

APEX_RADIUS = 0.5                    # of the body half-width
DOME_REFERENCE_MM = 90.0             # the diaphragm drops by Anatomy.dome_drop at this distance ...
DOME_POWER = 1.5                     # ... and it drops as (distance / reference) ** DOME_POWER
DOME_LATERAL = 0.4                   # of the body half-width: where each cupola is highest
DOME_V_MM = -10.0                    # the ridge sits a little anterior: the posterior recesses go deepest
DOME_STRETCH = (0.8, 1.1)            # front / back distances count this much: shallow anterior,
                                     # deep posterior costophrenic recesses
APEX_LATERAL, APEX_V = 0.4, 0.15     # apex position, fractions of the body half-width / half-AP

MAX_ABOVE_APEX_MM = 25.0             # how far above the lung apex a volume may start
WINDOW_CENTRE_DEPTH = 0.7            # the volume's middle lies at most this far down the lungs
BODY_FILL = (1.08, 1.35)             # field of view / body width (a reconstruction FOV)
SCALE_RANGE = (0.75, 1.45)
CENTRE_X_MM = (-8.0, 8.0)            # body centre from the image centre (right, posterior)
CENTRE_Y_MM = (-10.0, 20.0)
GROWTH_GRID_MM = 3.0                 # coarse lung map the trees grow in
DEPTH_GRID_MM = 2.0                  # coarse lung-depth map for placing things

# Dependent density: extra HU near the posterior pleura, fading inward (amplitude, decay mm).
DEPENDENT_HU = (60.0, 200.0)
DEPENDENT_DECAY_MM = (4.0, 12.0)
# Emphysema: holes of destroyed parenchyma, most toward the apex.
EMPHYSEMA_VOLUME = (0.02, 0.12)      # share of the lung volume in the window
EMPHYSEMA_RADIUS_MM = (1.0, 4.0)     # centrilobular holes; a few bullae are larger
BULLA_RADIUS_MM = (5.0, 12.0)
BULLA_SHARE = 0.03
EMPHYSEMA_HU = (-995.0, -960.0)
EMPHYSEMA_APEX_DECAY_MM = 120.0      # hole density falls as exp(-depth below apex / this)
EMPHYSEMA_MAX_HOLES = 1500


@dataclass(frozen=True)
class LungConditions:
    """Per-scan findings of the parenchyma (0 = absent)."""
    dependent_hu: float
    dependent_decay_mm: float
    emphysema_volume: float


def draw_conditions(rng: np.random.Generator, dependent_probability: float,
                    emphysema_probability: float) -> LungConditions:
    dependent = rng.random() < dependent_probability
    emphysema = rng.random() < emphysema_probability
    return LungConditions(dependent_hu=float(rng.uniform(*DEPENDENT_HU)) if dependent else 0.0,
                          dependent_decay_mm=float(rng.uniform(*DEPENDENT_DECAY_MM)),
                          emphysema_volume=float(rng.uniform(*EMPHYSEMA_VOLUME)) if emphysema else 0.0)


# ----------------------------------------------------------------------------- 2-D fields
@dataclass(frozen=True)
class LungPlane:
    """The depth-independent lung fields of an axial grid, beside the body's."""
    body: BodyPlane
    dome_rho: np.ndarray                # in-plane distance to the diaphragm's ridge
    dome_top: np.ndarray                # (nx,) depth of the diaphragm's ridge above each column
    apex_rho: np.ndarray                # in-plane distance to the apex of the lung on that side
    parenchyma: np.ndarray              # (terms, ny * nx) in-plane factors of the lung HU
    posterior: np.ndarray               # 0 in front of the body centre .. 1 at the back (dependent lung)
    midline: int                        # first column of the left half (u >= 0)


def lung_plane(anat: Anatomy, u: np.ndarray, v: np.ndarray) -> LungPlane:
    body = body_plane(anat, u, v)
    u, v = body.u, body.v
    U, V = u[None, :], v[:, None]
    # The diaphragm is highest along a ridge across the body, slightly in front, from the top
    # of one cupola to the other (right higher, lower in the middle under the heart); it falls
    # away from the ridge, least to the front, most to the back (the deep posterior recesses).
    ridge = DOME_LATERAL * anat.body_a
    dome_u = np.abs(U) - np.clip(np.abs(U), 0.0, ridge)
    stretch = np.where(V < DOME_V_MM, *DOME_STRETCH)
    dome_rho = np.sqrt(dome_u ** 2 + (stretch * (V - DOME_V_MM)) ** 2)
    dip = np.cos(np.pi / 2.0 * np.clip(u / ridge, -1.0, 1.0)) ** 2             # smooth, flat at the cupola tops
    dome_top = np.interp(u, [-ridge, ridge], anat.c_dome) + DOME_CENTRAL_DIP_MM * dip
    apex_rho = np.sqrt((np.abs(U) - APEX_LATERAL * anat.body_a) ** 2 + (V - APEX_V * anat.body_b) ** 2)
    parenchyma = parenchyma_basis(anat, U, V).reshape(-1, u.size * v.size)
    posterior = np.broadcast_to(np.clip(V / (0.7 * anat.body_b), 0.0, 1.0), (v.size, u.size))
    f32 = lambda x: np.ascontiguousarray(x, dtype=np.float32)   # noqa: E731
    return LungPlane(body, f32(dome_rho), f32(dome_top), f32(apex_rho), parenchyma, f32(posterior),
                     int(np.searchsorted(u, 0.0)))


def dome_radius(anat: Anatomy, below: np.ndarray) -> np.ndarray:
    """In-plane radius (around the ridge) of the diaphragm's section `below` mm under the
    ridge; negative above it, so that the lung level stays continuous."""
    return np.sign(below) * DOME_REFERENCE_MM * (np.abs(below) / anat.dome_drop) ** (1.0 / DOME_POWER)


@dataclass
class LungSlice:
    """Fields of one axial slice at depth c: the body's, and the lungs'."""
    body: BodySlice
    level: np.ndarray                   # lung level (mm, < 0 inside) of the lung on each half
    lungs: np.ndarray                   # uint8 RIGHT_LUNG / LEFT_LUNG / 0


def lung_slice(anat: Anatomy, plane: LungPlane, c: float) -> LungSlice:
    """Lung = inside the cavity, clear of the mediastinum, above the dome, below the apex cap."""
    s = body_slice(anat, plane.body, c)
    base = np.maximum(s.wall - s.depth, PLEURAL_GAP_MM - s.mediastinum)
    apex_r = float(APEX_RADIUS * anat.body_a * np.sign(c) * np.sqrt(abs(c) / anat.apex_cap))
    level = np.empty(base.shape, dtype=np.float32)
    lungs = np.zeros(base.shape, dtype=np.uint8)
    halves = (slice(0, plane.midline), slice(plane.midline, None))       # right lung at u < 0
    for cols, label in zip(halves, (RIGHT_LUNG, LEFT_LUNG)):
        below = c - plane.dome_top[cols]
        half = level[:, cols]
        np.maximum(base[:, cols], dome_radius(anat, below)[None, :] - plane.dome_rho[:, cols], out=half)
        np.maximum(half, plane.apex_rho[:, cols] - apex_r, out=half)
        lungs[:, cols][half < 0] = label
    return LungSlice(s, level, lungs)


# ----------------------------------------------------------------------------- parenchyma
def parenchyma_basis(anat: Anatomy, u, v) -> np.ndarray:
    """Lung HU is a base value, a gravity gradient toward the back and a few slow waves
    amp * cos(ku u + kv v + kc c + phase). Split as cos(a + b) = cos a cos b - sin a sin b,
    it is the sum over terms of these in-plane factors (terms, *shape) times the depth
    factors of parenchyma_weights, so a whole slice is one small weighted sum."""
    g = np.clip((v + anat.body_b) / (2.0 * anat.body_b), 0.0, 1.0)
    terms = [anat.hu_lung + anat.hu_gravity * g * g]
    for ku, kv, _, _, amp in anat.lung_waves.tolist():
        a = ku * u + kv * v
        terms += [amp * np.cos(a), amp * np.sin(a)]
    return np.stack(np.broadcast_arrays(*terms)).astype(np.float32)


def parenchyma_weights(anat: Anatomy, c) -> np.ndarray:
    """Depth factors (terms, *shape of c) matching parenchyma_basis."""
    c = np.asarray(c, dtype=np.float64)
    weights = [np.ones_like(c)]
    for _, _, kc, phase, _ in anat.lung_waves.tolist():
        weights += [np.cos(kc * c + phase), -np.sin(kc * c + phase)]
    return np.stack(weights).astype(np.float32)


def place_frame(anat: Anatomy, grid: Grid, rng: np.random.Generator) -> Frame:
    """The chest on the grid: scaled so that the body fills the field of view as a
    reconstruction FOV does, centred near the image centre, and a random part of the lungs'
    height in the volume (its middle within the upper WINDOW_CENTRE_DEPTH of the lungs)."""
    fov = float(grid.shape[2] * grid.spacing[2])
    scale = float(np.clip(fov / (2.0 * anat.body_a * rng.uniform(*BODY_FILL)), *SCALE_RANGE))
    span = (grid.shape[0] - 1) * grid.spacing[0]
    lo = -MAX_ABOVE_APEX_MM
    hi = max(lo, WINDOW_CENTRE_DEPTH * anat.lung_length - span / 2.0)
    return Frame(grid, scale, rng.uniform(*CENTRE_X_MM), rng.uniform(*CENTRE_Y_MM), rng.uniform(lo, hi))


def paint_chest(anat: Anatomy, frame: Frame, cond: LungConditions) -> tuple[np.ndarray, np.ndarray]:
    """Float32 HU and lung labels of every slice (no trees, nodules or findings yet)."""
    grid = frame.grid
    plane = lung_plane(anat, frame.u_of_x(grid.axis_mm(2)), frame.v_of_y(grid.axis_mm(1)))
    hu = np.empty(grid.shape, dtype=np.float32)
    labels = np.empty(grid.shape, dtype=np.uint8)
    for z, z_mm in enumerate(grid.axis_mm(0)):
        s = lung_slice(anat, plane, float(frame.c_of_z(z_mm)))
        paint_body_slice(anat, s.body, hu[z])
        # einsum, not matmul: no BLAS threads (slow when the cores are busy)
        parenchyma = np.einsum("k,kn->n", parenchyma_weights(anat, s.body.c), plane.parenchyma).reshape(hu[z].shape)
        if cond.dependent_hu:
            parenchyma += cond.dependent_hu * plane.posterior * np.exp(s.level / cond.dependent_decay_mm)
        np.copyto(hu[z], parenchyma, where=s.lungs > 0)
        labels[z] = s.lungs
    return hu, labels


def paint_emphysema(cond: LungConditions, frame: Frame, depth: "LungDepth", hu: np.ndarray, labels: np.ndarray,
                    rng: np.random.Generator) -> int:
    """Holes of -960..-995 HU in the parenchyma (never outside the lungs), more toward the
    apex, filling about ``cond.emphysema_volume`` of the lungs; returns how many."""
    if not cond.emphysema_volume:
        return 0
    grid = frame.grid
    points = depth.lung_points(min_depth_mm=1.0)
    if not len(points):
        return 0
    weight = np.exp(-frame.c_of_z(points[:, 0]) / EMPHYSEMA_APEX_DECAY_MM)
    lung_mm3 = float(np.count_nonzero((labels == RIGHT_LUNG) | (labels == LEFT_LUNG)) * np.prod(grid.spacing))
    bulla = rng.random(EMPHYSEMA_MAX_HOLES) < BULLA_SHARE
    radii = np.where(bulla, rng.uniform(*BULLA_RADIUS_MM, EMPHYSEMA_MAX_HOLES),
                     rng.uniform(*EMPHYSEMA_RADIUS_MM, EMPHYSEMA_MAX_HOLES))
    n = int(np.searchsorted(np.cumsum(4.0 / 3.0 * np.pi * radii ** 3), cond.emphysema_volume * lung_mm3)) + 1
    n = min(n, EMPHYSEMA_MAX_HOLES)
    at = points[rng.choice(len(points), size=n, p=weight / weight.sum())]
    at = at + rng.uniform(-0.5, 0.5, at.shape) * depth.step_mm
    values = rng.uniform(*EMPHYSEMA_HU, n)
    soft = float(np.mean(grid.spacing[1:]))
    for centre, radius, value in zip(at, radii[:n], values):
        hit = ball_box(centre, radius + soft, grid)
        if hit is None:
            continue
        box, d2 = hit
        occ = np.clip((radius - np.sqrt(d2)) / soft + 0.5, 0.0, 1.0)
        occ *= (labels[box] == RIGHT_LUNG) | (labels[box] == LEFT_LUNG)
        region = hu[box]
        region += (value - region) * occ
    return n


# ----------------------------------------------------------------------------- coarse maps
def _surface(depth: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LungDepth.pleura of a depth map."""
    surface = (depth > 0) & (depth <= float(step.max()) * 1.01)
    idx = np.argwhere(surface)
    if not len(idx):
        return np.zeros((0, 3)), np.zeros((0, 3))
    grad = np.stack([ndimage.sobel(depth, axis=k, mode="nearest")[surface] / step[k] for k in range(3)], axis=-1)
    norm = np.linalg.norm(grad, axis=1)
    ok = norm > 1e-6
    normals = grad[ok] / norm[ok, None]
    return idx[ok] * step - normals * depth[surface][ok, None], normals



@dataclass(frozen=True)
class LungMap:
    """Coarse lung labels over the whole lung height (also beyond the volume), so trees
    grow the same whatever part of the chest the volume shows."""
    labels: np.ndarray
    origin: np.ndarray                  # volume mm of labels[0, 0, 0]
    step: float

    def lookup(self, p_mm: np.ndarray) -> np.ndarray:
        idx = np.rint((p_mm - self.origin) / self.step).astype(np.intp)
        ok = np.all((idx >= 0) & (idx < np.asarray(self.labels.shape)), axis=-1)
        out = np.zeros(p_mm.shape[:-1], dtype=np.uint8)
        out[ok] = self.labels[tuple(idx[ok].T)]
        return out


def lung_map(anat: Anatomy, frame: Frame) -> LungMap:
    """Lung labels on a GROWTH_GRID_MM grid from the apex to the deepest recess."""
    step = GROWTH_GRID_MM
    c_end = max(anat.c_dome) + anat.dome_drop * (anat.body_a / DOME_REFERENCE_MM) ** DOME_POWER
    reach = 1.3 * anat.body_a * frame.scale
    ctr = frame.to_mm(np.zeros(3))
    origin = np.array([frame.to_mm(np.array([c_end, 0.0, 0.0]))[0], ctr[1] - reach, ctr[2] - reach])
    n_z = int(np.ceil((c_end + 5.0) / step)) + 1
    n_xy = int(np.ceil(2 * reach / step)) + 1
    labels = np.zeros((n_z, n_xy, n_xy), dtype=np.uint8)
    plane = lung_plane(anat, frame.u_of_x(origin[2] + np.arange(n_xy) * step),
                       frame.v_of_y(origin[1] + np.arange(n_xy) * step))
    for k in range(n_z):
        labels[k] = lung_slice(anat, plane, float(frame.c_of_z(origin[0] + k * step))).lungs
    return LungMap(labels, origin, step)


@dataclass(frozen=True)
class LungDepth:
    """Distance (mm) of the lung voxels to the nearest non-lung voxel, on a coarse subgrid of
    the volume (every ``stride``-th voxel): where a nodule fits, and where the pleura is."""
    depth: np.ndarray                   # float32, 0 outside the lungs
    labels: np.ndarray                  # lung labels on the subgrid
    stride: np.ndarray                  # (3,) voxels
    step_mm: np.ndarray                 # (3,) mm
    surface: tuple[np.ndarray, np.ndarray]   # see pleura()

    @staticmethod
    def of(labels: np.ndarray, grid: Grid) -> "LungDepth":
        stride = np.maximum(np.rint(DEPTH_GRID_MM / grid.spacing).astype(int), 1)
        sub = labels[::stride[0], ::stride[1], ::stride[2]]
        lung = (sub == RIGHT_LUNG) | (sub == LEFT_LUNG)
        step = stride * grid.spacing
        depth = ndimage.distance_transform_edt(lung, sampling=step).astype(np.float32) if lung.any() \
            else np.zeros(lung.shape, dtype=np.float32)
        return LungDepth(depth, np.where(lung, sub, 0).astype(np.uint8), stride, step, _surface(depth, step))

    def to_mm(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(idx) * self.step_mm

    def lung_points(self, min_depth_mm: float, max_depth_mm: float = np.inf) -> np.ndarray:
        """(n, 3) volume mm of subgrid lung voxels at that depth (never a voxel outside the lungs)."""
        return self.to_mm(np.argwhere((self.labels > 0) & (self.depth >= min_depth_mm) & (self.depth <= max_depth_mm)))

    def pleura(self) -> tuple[np.ndarray, np.ndarray]:
        """Lung voxels on the lung's surface: volume mm (n, 3) of the pleura next to them and
        the inward unit normals (n, 3), from the depth's gradient."""
        return self.surface

    def at(self, points_mm: np.ndarray) -> np.ndarray:
        """Depth (mm) at volume-mm points (..., 3), from the nearest subgrid voxel."""
        idx = np.clip(np.rint(np.asarray(points_mm) / self.step_mm).astype(int), 0, np.asarray(self.depth.shape) - 1)
        return self.depth[tuple(np.moveaxis(idx, -1, 0))]

