"""Vessel and airway trees inside the lungs, and the nodule-sized vessel spots that are
listed as false candidates.

Per lung, segmental arteries leave the hilum toward each bronchopulmonary segment and veins
leave two points below and in front of it; lobar bronchi leave the main bronchi. Each tree
branches at random in 3-D (Murray's law radii and angles) inside a coarse map of its own
lung. Vessels are unenhanced (+30..+60 HU): their cross-sections and forks are the
intended hard negatives.
"""
from __future__ import annotations

import numpy as np

from src.phantom.body import TRACHEA_WALL_MM, Anatomy
from src.phantom.lungs import AIRWAY, LEFT_LUNG, RIGHT_LUNG, LungMap
from src.phantom.shapes import Frame, Grid, Tubes, normalise

HU_AIRWAY_LUMEN = -990.0
HU_AIRWAY_WALL = -30.0
VESSEL_ROOT_RADIUS_MM = (3.0, 4.5)  # segmental arteries and veins at the hilum
# Initial directions (up, posterior, lateral) of the segmental vessels, upper lobe(s) first.
SEGMENT_DIRECTIONS = ((1.0, 0.2, 0.3), (0.6, 0.8, 0.4), (0.5, -0.8, 0.4), (0.1, 0.0, 1.0), (0.05, -0.9, 0.5),
                      (-0.2, 0.9, 0.3), (-0.9, -0.4, 0.3), (-0.8, 0.0, 0.7), (-0.8, 0.6, 0.2), (-1.0, 0.1, -0.1))
SUPERIOR_VEIN_OFFSET_MM = (-10.0, -15.0, 0.0)   # (z, y, x) from the hilum: lower and in front
INFERIOR_VEIN_OFFSET_MM = (-35.0, 5.0, 0.0)
VESSEL_MIN_RADIUS_MM = 0.5
AIRWAY_ROOT_RADIUS_MM = (3.8, 5.0)
AIRWAY_MIN_RADIUS_MM = 1.4
MAIN_BRONCHUS_RADIUS_MM = (5.5, 7.0)
# Initial directions (up, posterior, lateral) of the upper, lower and middle lobe bronchi.
LOBAR_BRONCHUS_DIRECTIONS = ((1.0, -0.1, 0.7), (-1.0, 0.4, 0.5), (-0.2, -0.6, 1.0))
TAPER = 0.98                         # radius kept along one segment
VESSEL_SEGMENT_MM = ((5.0, 9.0), 2.0)  # segment length: radius x uniform(range) + extra
AIRWAY_SEGMENT_MM = ((4.0, 7.0), 4.0)
AIRWAY_WALL = (0.18, 0.5)            # wall thickness: fraction of the lumen radius, minimum mm
TREE_OUTWARD_PUSH = 0.25             # pull of each new segment away from its root ...
TREE_ROOT_BACKOFF_MM = 15.0          # ... taken as a point this far behind the root
TREE_TRIES = ((0.25, 1.0), (0.6, 1.0), (0.6, 0.5))   # (direction noise, length factor) per try
TREE_BRANCH_RATIO = (0.3, 1.0)       # minor / major child radius
TREE_ANGLE_JITTER = 0.1              # rad, around Murray's optimal branching angles
ROOT_JITTER = 0.15                   # of the segmental vessels' initial directions
LUNG_SEARCH_MM = (60.0, 2.0, 3.0)    # roots: search range and step for the lung, then go this deep
CANDIDATE_RADIUS_MM = (1.5, 4.0)     # vessels of nodule size become false candidates
CANDIDATE_COUNT = (12, 36)
CANDIDATE_SEPARATION_MM = 10.0
CANDIDATE_MIN_COSINE = 0.7           # segments this close to cranio-caudal look round on a slice
CANDIDATE_CLEARANCE_MM = 2.0         # candidates lie this far outside every nodule (near ones too)


def airway_walls(tree: Tubes) -> np.ndarray:
    """Wall thickness (mm) of each airway tube of the lungs' tree."""
    wall_fraction, wall_min = AIRWAY_WALL
    return np.maximum(wall_min, wall_fraction * tree.r0)


def grow_tree(p: np.ndarray, d: np.ndarray, r: np.ndarray, label: np.ndarray, lung: LungMap,
               rng: np.random.Generator, r_min: float,
               segment_mm: tuple[tuple[float, float], float]) -> tuple[Tubes, np.ndarray]:
    """Random 3-D branching, one generation at a time (vectorised, deterministic in rng).

    Each tip grows a segment of length ~ radius (segment_mm), bent at random and pushed
    away from its root, kept if its end and middle lie in its own lung (TREE_TRIES).
    p, d, r, label: the roots' points (volume mm), unit directions, radii and lung labels. Then it forks in two: radii by Murray's law r^3 = r1^3 + r2^3 with a random
    asymmetry, angles from Murray's optimum, the children in a plane at a random roll. A tip
    that found no room (the pleura) still forks once, in a random direction, so vessels thin
    out before the lung edge instead of ending there at full calibre.
    Returns the segments and, per segment, whether it starts at a fork.
    """
    root = p - TREE_ROOT_BACKOFF_MM * normalise(d)  # the outward push points away from here
    (length_lo, length_hi), length_extra = segment_mm
    parts, forks = [], []
    at_fork = np.zeros(len(p), dtype=bool)
    stalled = np.zeros(len(p), dtype=bool)
    while len(p):
        length = r * rng.uniform(length_lo, length_hi, len(r)) + length_extra
        outward = normalise(p - root)
        keep = np.zeros(len(p), dtype=bool)
        end = p.copy()
        direction = normalise(rng.normal(0.0, 1.0, d.shape))          # for tips that find no room
        for spread, shorten in TREE_TRIES:
            trial = normalise(d + TREE_OUTWARD_PUSH * outward + rng.normal(0.0, spread, d.shape))
            trial_end = p + shorten * length[:, None] * trial
            ok = ~keep & (lung.lookup(trial_end) == label) & (lung.lookup((p + trial_end) / 2.0) == label)
            end[ok], direction[ok], keep = trial_end[ok], trial[ok], keep | ok
        r_end = r * TAPER
        parts.append(Tubes(p[keep], end[keep], r[keep], r_end[keep]))
        forks.append(at_fork[keep])
        alive = keep | ~stalled
        p, d, r_end, root, label, stalled = end[alive], direction[alive], r_end[alive], root[alive], label[alive], ~keep[alive]
        ratio = rng.uniform(*TREE_BRANCH_RATIO, len(p))
        r1 = r_end / np.cbrt(1.0 + ratio ** 3)
        r2 = ratio * r1
        r0sq, r1sq, r2sq = r_end ** 2, r1 ** 2, r2 ** 2
        cos1 = np.clip((r0sq ** 2 + r1sq ** 2 - r2sq ** 2) / (2 * r0sq * r1sq), -1.0, 1.0)
        cos2 = np.clip((r0sq ** 2 + r2sq ** 2 - r1sq ** 2) / (2 * r0sq * r2sq), -1.0, 1.0)
        a1 = np.arccos(cos1) + rng.normal(0.0, TREE_ANGLE_JITTER, len(p))
        a2 = np.arccos(cos2) + rng.normal(0.0, TREE_ANGLE_JITTER, len(p))
        roll = rng.normal(0.0, 1.0, d.shape)
        perp = normalise(roll - np.sum(roll * d, axis=1, keepdims=True) * d)
        d1 = np.cos(a1)[:, None] * d + np.sin(a1)[:, None] * perp
        d2 = np.cos(a2)[:, None] * d - np.sin(a2)[:, None] * perp
        p, d, r = np.concatenate([p, p]), np.concatenate([d1, d2]), np.concatenate([r1, r2])
        root, label = np.concatenate([root, root]), np.concatenate([label, label])
        stalled = np.concatenate([stalled, stalled])
        big = r >= r_min
        p, d, r, root, label, stalled = p[big], d[big], r[big], root[big], label[big], stalled[big]
        at_fork = np.ones(len(p), dtype=bool)
    return Tubes.concat(parts), np.concatenate(forks)


def into_lung(lung: LungMap, start: np.ndarray, direction: np.ndarray, label: int) -> np.ndarray | None:
    """A point just inside the lung along direction from start (None if none in reach)."""
    reach, step, deeper = LUNG_SEARCH_MM
    unit = normalise(direction)
    steps = start + np.arange(0.0, reach, step)[:, None] * unit
    inside = np.nonzero(lung.lookup(steps) == label)[0]
    return steps[inside[0]] + deeper * unit if inside.size else None


def hilum_mm(anat: Anatomy, frame: Frame, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Hilum point (volume mm) and the lateral unit vector of one side (0 right, 1 left)."""
    lateral = np.array([0.0, 0.0, -1.0 if side == 0 else 1.0])
    return frame.to_mm(anat.hila[side]), lateral


def grow_vessels(anat: Anatomy, frame: Frame, lung: LungMap, rng: np.random.Generator) -> tuple[Tubes, np.ndarray]:
    """Per lung: a segmental artery toward each bronchopulmonary segment from the hilum, and
    the veins of the upper and lower segments from two points below and in front of it."""
    roots_p, roots_d, labels = [], [], []
    for side, label in ((0, RIGHT_LUNG), (1, LEFT_LUNG)):
        hilum, lateral = hilum_mm(anat, frame, side)
        to_volume = np.array([1.0, 1.0, lateral[2]])                     # (up, posterior, lateral) -> (z, y, x)
        upper = [d for d in SEGMENT_DIRECTIONS if d[0] > 0]
        lower = [d for d in SEGMENT_DIRECTIONS if d[0] <= 0]
        for origin, directions in ((hilum, SEGMENT_DIRECTIONS),
                                   (hilum + np.array(SUPERIOR_VEIN_OFFSET_MM), upper),
                                   (hilum + np.array(INFERIOR_VEIN_OFFSET_MM), lower)):
            for direction in directions:
                dvec = normalise(np.array(direction) * to_volume + rng.normal(0.0, ROOT_JITTER, 3))
                start = into_lung(lung, origin, dvec + 0.7 * lateral, label)     # mostly sideways from the hilum
                if start is not None:
                    roots_p.append(start)
                    roots_d.append(dvec)
                    labels.append(label)
    if not roots_p:
        return Tubes.empty(), np.zeros(0, dtype=bool)
    radius = rng.uniform(*VESSEL_ROOT_RADIUS_MM, len(roots_p))
    return grow_tree(np.array(roots_p), np.array(roots_d), radius, np.array(labels, dtype=np.uint8), lung,
                      rng, VESSEL_MIN_RADIUS_MM, VESSEL_SEGMENT_MM)


def grow_airways(anat: Anatomy, frame: Frame, lung: LungMap, rng: np.random.Generator) -> tuple[Tubes, Tubes]:
    """Trachea and main bronchi (labelled as airways), and the lobar bronchi with their
    trees inside the lungs."""
    tr = anat.trachea
    carina = frame.to_mm(np.array([anat.c_carina, tr.cv, tr.cu]))
    above = frame.to_mm(np.array([-2.0 * anat.apex_cap, tr.cv, tr.cu]))   # up into the neck, vertical as in 2-D
    main_r = rng.uniform(*MAIN_BRONCHUS_RADIUS_MM, 2)
    main = [Tubes(np.array([above]), np.array([carina]), np.array([tr.a * frame.scale]),
                   np.array([tr.a * frame.scale]))]
    lobar, roots_p, roots_d, labels = [], [], [], []
    for side, label in ((0, RIGHT_LUNG), (1, LEFT_LUNG)):
        hilum, lateral = hilum_mm(anat, frame, side)
        hilum = hilum + np.array([2.0, 4.0, 0.0])                         # bronchus above / behind the artery
        main.append(Tubes(carina[None], hilum[None], main_r[side:side + 1], 0.85 * main_r[side:side + 1]))
        for direction in LOBAR_BRONCHUS_DIRECTIONS:
            dvec = normalise(np.array(direction) * np.array([1.0, 1.0, lateral[2]]))
            start = into_lung(lung, hilum, lateral + 0.5 * dvec, label)
            if start is not None:
                r = 0.75 * main_r[side]
                lobar.append(Tubes(hilum[None], start[None], np.array([r]), np.array([0.9 * r])))
                roots_p.append(start)
                roots_d.append(dvec)
                labels.append(label)
    if not roots_p:
        return Tubes.concat(main), Tubes.empty()
    radius = rng.uniform(*AIRWAY_ROOT_RADIUS_MM, len(roots_p))
    tree, _ = grow_tree(np.array(roots_p), np.array(roots_d), radius, np.array(labels, dtype=np.uint8),
                         lung, rng, AIRWAY_MIN_RADIUS_MM, AIRWAY_SEGMENT_MM)
    return Tubes.concat(main), Tubes.concat(lobar + [tree])




def paint_trees(anat: Anatomy, grid: Grid, vessels: Tubes, airways: tuple[Tubes, Tubes], hu: np.ndarray,
                labels: np.ndarray, keep_out: np.ndarray) -> np.ndarray:
    """Blend each tube straight into hu (overlaps compose like a union): vessels clipped to
    the lungs, then all airway walls, then all lumens (so a wall never crosses a lumen);
    trachea and main bronchi lumens become label AIRWAY. Nothing is drawn where
    ``keep_out`` is set (nodules and the margins kept around them). Returns the vessel
    voxels (occupancy >= 0.5)."""
    lung_mask = (labels == RIGHT_LUNG) | (labels == LEFT_LUNG)
    vessel = np.zeros(grid.shape, dtype=bool)
    for box, occ in vessels.occupancy(grid):
        occ *= lung_mask[box] & ~keep_out[box]
        region = hu[box]
        region += (anat.hu_vessel - region) * occ
        vessel[box] |= occ >= 0.5
    main, tree = airways
    passes = [(main, TRACHEA_WALL_MM, HU_AIRWAY_WALL), (tree, airway_walls(tree), HU_AIRWAY_WALL),
              (main, 0.0, HU_AIRWAY_LUMEN), (tree, 0.0, HU_AIRWAY_LUMEN)]
    for tubes, extra, value in passes:
        for box, occ in tubes.occupancy(grid, extra):
            occ *= ~keep_out[box]
            region = hu[box]
            region += (value - region) * occ
            if tubes is main and value == HU_AIRWAY_LUMEN:
                labels[box][occ >= 0.5] = AIRWAY
    vessel &= hu > -400.0          # an airway drawn over a vessel wins
    return vessel


def vessel_candidates(vessels: Tubes, forks: np.ndarray, labels: np.ndarray, nodules: list[tuple[np.ndarray, float]],
                      grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Nodule-sized vessel spots: midpoints of mostly cranio-caudal segments (round on an
    axial slice) and forks, inside a lung and outside every nodule (``nodules``: centre mm
    and reach mm), near ones included. Voxel (z, y, x), (n, 3)."""
    radius = (vessels.r0 + vessels.r1) / 2.0
    along = vessels.p1 - vessels.p0
    cranio = np.abs(along[:, 0]) > CANDIDATE_MIN_COSINE * np.linalg.norm(along, axis=1)
    sized = (radius >= CANDIDATE_RADIUS_MM[0]) & (radius <= CANDIDATE_RADIUS_MM[1])
    points = np.concatenate([((vessels.p0 + vessels.p1) / 2.0)[sized & cranio], vessels.p0[sized & forks]])
    vox = points / grid.spacing
    idx = np.rint(vox).astype(np.intp)
    inside = np.all((idx >= 0) & (idx < np.asarray(grid.shape)), axis=1)
    points, vox, idx = points[inside], vox[inside], idx[inside]
    in_lung = np.isin(labels[tuple(idx.T)], (RIGHT_LUNG, LEFT_LUNG))
    points, vox = points[in_lung], vox[in_lung]
    for centre, reach in nodules:
        far = np.linalg.norm(points - centre, axis=1) >= reach + CANDIDATE_CLEARANCE_MM
        points, vox = points[far], vox[far]
    wanted = int(rng.integers(*CANDIDATE_COUNT, endpoint=True))
    chosen: list[int] = []
    for i in rng.permutation(len(points)):
        if all(np.linalg.norm(points[i] - points[j]) >= CANDIDATE_SEPARATION_MM for j in chosen):
            chosen.append(int(i))
            if len(chosen) == wanted:
                break
    return vox[sorted(chosen)].reshape(-1, 3).astype(np.float64)
