"""Findings that are not nodules of the reference standard but look enough like them to
mislead: pleural plaques and thickenings, linear scars (parenchymal bands) and sub-3 mm
nodules. Vessel spots and forks near the nodules come from the trees (``trees.py``).

Each keeps NODULE_GAP_MM from every placed nodule, so the truth is never touched; the
sub-3 mm nodules are listed like LUNA16's excluded findings (``annotations_excluded.csv``).
"""
from __future__ import annotations

import numpy as np

from src.phantom.placement import PLEURA_MAX_NZ, WALL_HU_FLOOR, Scene
from src.phantom.shapes import Tubes, ball_box, normalise, random_unit

NODULE_GAP_MM = 3.0
TRIES = 60
PLAQUE_COUNT = (1, 4)
PLAQUE_THICKNESS_MM = (1.5, 5.0)             # half-axis along the normal
PLAQUE_HALF_LENGTH_MM = (6.0, 20.0)          # half-axes along the pleura
PLAQUE_CALCIFIED = 0.25
HU_PLAQUE = (20.0, 70.0)
HU_CALCIFIED_PLAQUE = (250.0, 700.0)
SCAR_COUNT = (1, 3)
SCAR_RADIUS_MM = (0.4, 1.0)
SCAR_LENGTH_MM = (10.0, 35.0)
HU_SCAR = (-300.0, 0.0)
MICRONODULE_DIAMETER_MM = (1.5, 3.0)
MICRONODULE_CALCIFIED = 0.3
HU_MICRONODULE = (-10.0, 80.0)
HU_CALCIFIED_MICRONODULE = (300.0, 900.0)


def _clear_of_nodules(scene: Scene, centre: np.ndarray, reach: float) -> bool:
    return all(np.linalg.norm(centre - c) >= reach + r + NODULE_GAP_MM for c, r in scene.placed)


def _lateral_pleura(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    points, normals = scene.depth.pleura()
    keep = np.abs(normals[:, 0]) < PLEURA_MAX_NZ
    return points[keep], normals[keep]


def add_plaques(scene: Scene, probability: float, rng: np.random.Generator) -> int:
    """Lens-shaped pleural thickenings (some calcified): the lung inside an ellipsoid
    centred on the pleura becomes wall tissue. Drawn before the trees, which they clip."""
    if rng.random() >= probability:
        return 0
    points, normals = _lateral_pleura(scene)
    grid = scene.grid
    count = 0
    wanted = int(rng.integers(PLAQUE_COUNT[0], PLAQUE_COUNT[1] + 1))
    for i in rng.permutation(len(points))[:TRIES]:
        if count == wanted:
            break
        at, n = points[i], normals[i]
        thick, length = rng.uniform(*PLAQUE_THICKNESS_MM), rng.uniform(*PLAQUE_HALF_LENGTH_MM)
        beyond = np.rint((at - 2.0 * n) / grid.spacing).astype(int)
        if np.any(beyond < 0) or np.any(beyond >= grid.shape) or scene.hu[tuple(beyond)] < WALL_HU_FLOOR:
            continue
        if not _clear_of_nodules(scene, at, length):
            continue
        hit = ball_box(at, length, grid)
        if hit is None:
            continue
        box, _ = hit
        rel = [a - c for a, c in zip(grid.box_mm(box), at)]
        along_n = rel[0][:, None, None] * n[0] + rel[1][None, :, None] * n[1] + rel[2][None, None, :] * n[2]
        d2 = sum(np.broadcast_arrays(*[(r ** 2).reshape(s) for r, s in zip(rel, [(-1, 1, 1), (1, -1, 1), (1, 1, -1)])]))
        across2 = np.maximum(d2 - along_n ** 2, 0.0)
        inside = (along_n / thick) ** 2 + across2 / length ** 2 <= 1.0
        inside &= scene.lung(box) & ~scene.occupied[box]
        calcified = rng.random() < PLAQUE_CALCIFIED
        scene.hu[box][inside] = rng.uniform(*(HU_CALCIFIED_PLAQUE if calcified else HU_PLAQUE))
        scene.labels[box][inside] = 0
        count += 1
    return count


def add_scars(scene: Scene, probability: float, rng: np.random.Generator) -> int:
    """Thin soft-tissue bands from the pleura into the lung (parenchymal bands), painted
    over the parenchyma and the trees."""
    if rng.random() >= probability:
        return 0
    points, normals = _lateral_pleura(scene)
    wanted = int(rng.integers(SCAR_COUNT[0], SCAR_COUNT[1] + 1))
    scars = []
    for i in rng.permutation(len(points))[:TRIES]:
        if len(scars) == wanted:
            break
        direction = normalise(normals[i] + 0.6 * random_unit(rng))
        length = rng.uniform(*SCAR_LENGTH_MM)
        start = points[i] + 0.5 * normals[i]
        end = start + direction * length
        middle = (start + end) / 2.0
        if scene.depth.at(end) <= 0 or not _clear_of_nodules(scene, middle, length / 2.0):
            continue
        scars.append((start, end, rng.uniform(*SCAR_RADIUS_MM), rng.uniform(*HU_SCAR)))
    for start, end, radius, value in scars:
        tube = Tubes(start[None], end[None], np.array([radius]), np.array([0.6 * radius]))
        for box, occ in tube.occupancy(scene.grid):
            occ *= scene.lung(box) & ~scene.occupied[box]
            region = scene.hu[box]
            region += (value - region) * occ
    return len(scars)


def add_micronodules(scene: Scene, mean_count: float, rng: np.random.Generator) -> list[tuple[np.ndarray, float]]:
    """Sub-3 mm solid or calcified nodules in the aerated lung, off the vessels: (centre mm,
    diameter mm) of each, for annotations_excluded.csv."""
    n = int(rng.poisson(mean_count))
    points = scene.depth.lung_points(min_depth_mm=3.0)
    out: list[tuple[np.ndarray, float]] = []
    soft = float(np.mean(scene.grid.spacing[1:]))
    for i in rng.permutation(len(points))[:TRIES]:
        if len(out) == n:
            break
        diameter = rng.uniform(*MICRONODULE_DIAMETER_MM)
        centre = points[i] + rng.uniform(-0.5, 0.5, 3) * scene.depth.step_mm
        radius = diameter / 2.0
        if not _clear_of_nodules(scene, centre, radius) or \
                (len(scene.vessels) and (scene.vessels.distance(centre) < radius + 1.0).any()):
            continue
        hit = ball_box(centre, radius + soft, scene.grid)
        if hit is None:
            continue
        box, d2 = hit
        occ = np.clip((radius - np.sqrt(d2)) / soft + 0.5, 0.0, 1.0) * scene.lung(box)
        value = rng.uniform(*(HU_CALCIFIED_MICRONODULE if rng.random() < MICRONODULE_CALCIFIED else HU_MICRONODULE))
        region = scene.hu[box]
        region += (value - region) * occ
        scene.placed.append((centre, radius))
        out.append((centre, diameter))
    return out
