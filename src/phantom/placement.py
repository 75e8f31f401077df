"""Where each nodule goes, and what it touches: isolated, juxta-pleural or juxta-vascular.

The chest is drawn first; each nodule (largest first) is then placed in it by its planned
attachment class:

* isolated: in the aerated lung with its surface >= CLEARANCE_MM from the pleura, at a
  depth drawn so that nodules sit as near the pleura as published (ISOLATED_GAP_MM), away
  from vessels >= THIN_VESSEL_MM; thinner ones stop VESSEL_MARGIN_MM short of it;
* juxta-pleural: against the costal or mediastinal pleura. The nodule keeps its own shape;
  the wall is drawn to it: wall tissue fills the lung where (distance to the wall) +
  (distance to the nodule) <= gap + breadth, a smooth, broad contact patch that wraps
  round its outer side (no spikes);
* juxta-vascular: beside a vessel of 0.8-2.5 mm radius of the tree, which either runs
  along its surface or ends on it; sometimes a second, thinner vessel of the tree is led
  to it too.

Wall and vessel voxels never enter the nodule's body (its physical shape and its
consensus), so the truth holds none; a threshold grown from the centre still leaks into
them, as on real CT. ``contact`` measures what was realised on the rendered volume.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from src.phantom.lungs import LEFT_LUNG, RIGHT_LUNG, LungDepth
from src.phantom.nodules import NoduleBody
from src.phantom.shapes import Box, Grid, Tubes, box_gap, normalise, overlap, placed_box, random_unit

ISOLATED, JUXTA_PLEURAL, JUXTA_VASCULAR = "isolated", "juxta-pleural", "juxta-vascular"
ATTACHMENTS = (ISOLATED, JUXTA_PLEURAL, JUXTA_VASCULAR)

TRIES = 150                          # candidate positions per nodule and class
CLEARANCE_MM = 1.5                   # isolated / juxta-vascular: surface to pleura
# Isolated: surface-to-pleura gap = CLEARANCE_MM + an exponential draw of this mean. LIDC
# nodules sit 5-7 mm from the pleura on average, attached ones included (1,556 nodules,
# arXiv 2106.12991); a uniform draw over the lung put isolated ones 14.5 mm deep.
ISOLATED_GAP_MM = 5.5
NODULE_GAP_MM = 3.0                  # between two nodules' bodies (by their reach)
AIRWAY_MARGIN_MM = 1.0
VESSEL_MARGIN_MM = 1.5               # isolated / juxta-pleural: no vessel this close (> CONTACT_MM)
THIN_VESSEL_MM = 1.5                 # isolated: thicker vessels move it elsewhere, thinner ones stop short
BIG_VESSEL_MM = 2.5                  # no nodule sits on a thicker vessel
PLEURA_MAX_NZ = 0.6                  # steeper surface normals are apex or diaphragm
PLEURAL_GAP_MM = (0.0, 1.5)          # nodule surface to pleura before the wall is drawn to it
CONTACT_BREADTH = (0.7, 1.4)         # x the radius: how far the wall wraps round the nodule
MIN_CONTACT_BREADTH_MM = 1.5
HU_PLEURAL_TISSUE = (20.0, 60.0)
WALL_HU_FLOOR = -300.0               # the tissue beyond a chosen pleura is not air (airways)
VESSEL_RADIUS_MM = (0.8, 2.5)        # vessels a juxta-vascular nodule touches
ALONG_OVERLAP = (0.3, 0.8)           # x the vessel radius inside the nodule's body (cleared there)
END_OVERLAP_MM = (0.5, 1.5)
SECOND_VESSEL_PROBABILITY = 0.4
FEEDER_SEARCH_MM = 25.0
FEEDER_RADIUS_MM = (0.8, 1.6)
CONTACT_MM = 1.0                     # "touches": within this of the consensus surface
CONTACT_GRID_MM = 0.5                # contact is measured on this isotropic grid
WALL_DISTANCE_REACH_MM = 40.0        # the surface-to-wall gap is measured up to this


@dataclass
class Placement:
    offset: np.ndarray                  # voxel of the padded crop's [0, 0, 0] in the volume
    centre_mm: np.ndarray               # consensus centroid, volume mm
    attachment: str                     # the class it was placed as
    record: dict = field(default_factory=dict)


@dataclass
class Scene:
    """The chest as far as it is drawn, and what has been placed in it."""
    grid: Grid
    hu: np.ndarray
    labels: np.ndarray
    depth: LungDepth
    vessels: Tubes
    forks: np.ndarray                   # bool per vessel: it starts at a fork
    airways: Tubes                      # every airway tube, walls included in its radii
    midline_x_mm: float                 # the body's midline (costal vs mediastinal pleura)
    occupied: np.ndarray = None         # bool: nodule bodies so far
    placed: list[tuple[np.ndarray, float]] = field(default_factory=list)   # centre mm, reach mm

    def __post_init__(self) -> None:
        if self.occupied is None:
            self.occupied = np.zeros(self.grid.shape, dtype=bool)

    def add_vessels(self, tubes: Tubes) -> None:
        self.vessels = Tubes.concat([self.vessels, tubes])
        self.forks = np.concatenate([self.forks, np.zeros(len(tubes), dtype=bool)])

    def lung(self, box: Box) -> np.ndarray:
        labels = self.labels[box]
        return (labels == RIGHT_LUNG) | (labels == LEFT_LUNG)


# ----------------------------------------------------------------------------- helpers
def _snap(scene: Scene, body: NoduleBody, centre_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer crop offset for a wanted centre, and the centre it really gives."""
    offset = np.rint(np.asarray(centre_mm) / scene.grid.spacing - body.centre).astype(int)
    return offset, (offset + body.centre) * scene.grid.spacing


def _crop_fits(scene: Scene, body: NoduleBody, offset: np.ndarray) -> bool:
    """The readers' crop (padding aside) lies inside the volume: the masks stay whole."""
    lo = offset + body.pad
    hi = offset + np.asarray(body.alpha.shape) - body.pad
    return bool(np.all(lo >= 0) and np.all(hi <= np.asarray(scene.grid.shape)))


def _far_from_others(scene: Scene, centre: np.ndarray, reach: float) -> bool:
    return all(np.linalg.norm(centre - c) >= reach + r + NODULE_GAP_MM for c, r in scene.placed)


def _crossing(tubes: Tubes, centre: np.ndarray, reach: float, margin: float) -> np.ndarray:
    """Tubes that come within ``margin`` of the ball of ``reach`` around ``centre``."""
    if not len(tubes):
        return np.zeros(0, dtype=bool)
    return tubes.distance(centre) < reach + margin


def _box_and_body(scene: Scene, body: NoduleBody, offset: np.ndarray, margin_mm: float
                  ) -> tuple[Box, np.ndarray]:
    """A volume box around the placed body (plus margin), and the body inside it."""
    return placed_box(body.body, offset, np.ceil(margin_mm / scene.grid.spacing).astype(int), scene.grid.shape)


def _gap_to_wall(scene: Scene, body: NoduleBody, offset: np.ndarray, margin_mm: float) -> float | None:
    """Smallest gap (mm) between the placed body's voxels and non-lung voxels, taken as
    boxes (so that the next slice of a thick-slice scan touches), looking within
    ``margin_mm``; None if the body leaves the lungs or meets another nodule."""
    box, inside = _box_and_body(scene, body, offset, margin_mm + 2.0 * float(scene.grid.spacing.max()))
    lung = scene.lung(box)
    if np.count_nonzero(inside) < np.count_nonzero(body.body):
        return None                                            # cut by the volume's border
    if not lung[inside].all() or scene.occupied[box][inside].any():
        return None
    return float(box_gap(~lung, scene.grid.spacing)[inside].min()) if not lung.all() else float(margin_mm)


def _tubes_allow(scene: Scene, centre: np.ndarray, reach: float, thick_mm: float, margin: float) -> bool:
    """No airway near, and no vessel of radius >= thick_mm within margin of the ball."""
    if _crossing(scene.airways, centre, reach, AIRWAY_MARGIN_MM).any():
        return False
    radius = 0.5 * (scene.vessels.r0 + scene.vessels.r1)
    return not (_crossing(scene.vessels, centre, reach, margin) & (radius >= thick_mm)).any()


def _cheap_checks(scene: Scene, body: NoduleBody, offset: np.ndarray, centre: np.ndarray, thick_mm: float,
                  margin: float) -> bool:
    return (_crop_fits(scene, body, offset) and _far_from_others(scene, centre, body.reach_mm)
            and _tubes_allow(scene, centre, body.reach_mm, thick_mm, margin))


# ----------------------------------------------------------------------------- the three classes
def _place_isolated(scene: Scene, body: NoduleBody, rng: np.random.Generator, relaxed: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, dict] | None:
    reach = body.reach_mm
    clearance = 0.0 if relaxed else CLEARANCE_MM
    points = scene.depth.lung_points(min_depth_mm=min(reach, 8.0) + clearance)
    if not len(points):
        points = scene.depth.lung_points(min_depth_mm=1.0)
    thick = np.inf if relaxed else THIN_VESSEL_MM
    order = rng.permutation(len(points))
    if not relaxed:   # the points nearest a drawn depth first, in random order among equals
        wanted = body.record["radius_mm"] + clearance + rng.exponential(ISOLATED_GAP_MM)
        order = order[np.argsort(np.abs(scene.depth.at(points[order]) - wanted), kind="stable")]
    for i in order[:TRIES]:
        offset, centre = _snap(scene, body, points[i])
        if not _cheap_checks(scene, body, offset, centre, thick, VESSEL_MARGIN_MM):
            continue
        gap = _gap_to_wall(scene, body, offset, CLEARANCE_MM)
        if gap is not None and gap >= clearance:
            return offset, centre, {}
    return None


def _place_juxta_pleural(scene: Scene, body: NoduleBody, rng: np.random.Generator
                         ) -> tuple[np.ndarray, np.ndarray, dict] | None:
    points, normals = scene.depth.pleura()
    lateral = np.abs(normals[:, 0]) < PLEURA_MAX_NZ
    points, normals = points[lateral], normals[lateral]
    for i in rng.permutation(len(points))[:TRIES]:
        wall_at, n = points[i], normals[i]
        beyond = np.rint((wall_at - 2.0 * n) / scene.grid.spacing).astype(int)
        if np.any(beyond < 0) or np.any(beyond >= scene.grid.shape) or scene.hu[tuple(beyond)] < WALL_HU_FLOOR:
            continue
        gap_wanted = rng.uniform(*PLEURAL_GAP_MM)
        centre = wall_at + n * (body.extent(-n) + gap_wanted)
        for _ in range(3):                       # the wall curves: nudge along the normal
            offset, centre = _snap(scene, body, centre)
            if not _cheap_checks(scene, body, offset, centre, THIN_VESSEL_MM, VESSEL_MARGIN_MM):
                break
            gap = _gap_to_wall(scene, body, offset, gap_wanted + 3.0)
            if gap is None:
                centre = centre + n * 1.0
            elif gap > gap_wanted + 1.0:
                centre = centre - n * (gap - gap_wanted)
            else:
                to_mid = np.sign(scene.midline_x_mm - wall_at[2])
                pleura = "mediastinal" if n[2] * to_mid < -0.5 else "costal"
                return offset, centre, dict(pleura=pleura, pleural_gap_mm=gap)
    return None


def _place_juxta_vascular(scene: Scene, body: NoduleBody, rng: np.random.Generator
                          ) -> tuple[np.ndarray, np.ndarray, dict] | None:
    v = scene.vessels
    if not len(v):
        return None
    radius = 0.5 * (v.r0 + v.r1)
    mid = 0.5 * (v.p0 + v.p1)
    ok = (radius >= VESSEL_RADIUS_MM[0]) & (radius <= VESSEL_RADIUS_MM[1])
    ok &= scene.depth.at(mid) >= CLEARANCE_MM
    for i in rng.permutation(np.flatnonzero(ok))[:TRIES]:
        axis = normalise(v.p1[i] - v.p0[i])
        if rng.random() < 0.5:
            mode, t = "along", rng.uniform(0.2, 0.8)
            side = normalise(np.cross(axis, random_unit(rng)))
            r_vessel = v.r0[i] + t * (v.r1[i] - v.r0[i])
            touch = v.p0[i] + t * (v.p1[i] - v.p0[i])
            centre = touch + side * (body.extent(-side) + r_vessel * (1.0 - rng.uniform(*ALONG_OVERLAP)))
        else:
            mode, r_vessel = "end", v.r1[i]
            centre = v.p1[i] + axis * (body.extent(-axis) - rng.uniform(*END_OVERLAP_MM))
        offset, centre = _snap(scene, body, centre)
        if not _cheap_checks(scene, body, offset, centre, BIG_VESSEL_MM + 1e-6, 0.0):
            continue
        gap = _gap_to_wall(scene, body, offset, CLEARANCE_MM)
        if gap is None or gap < CLEARANCE_MM:
            continue
        record = dict(vessel_mode=mode, vessel_radius_mm=float(r_vessel), n_vessels=1)
        feeder = _feeder(scene, body, centre, i, rng) if rng.random() < SECOND_VESSEL_PROBABILITY else None
        if feeder is not None:
            scene.add_vessels(feeder)
            record["n_vessels"] = 2
        return offset, centre, record
    return None


def _feeder(scene: Scene, body: NoduleBody, centre: np.ndarray, chosen: int, rng: np.random.Generator) -> Tubes | None:
    """A thinner vessel from the nearest other point of the tree to the nodule's surface."""
    v = scene.vessels
    e = v.p1 - v.p0
    t = np.clip(np.einsum("ij,ij->i", centre - v.p0, e) / np.maximum(np.einsum("ij,ij->i", e, e), 1e-9), 0.0, 1.0)
    nearest = v.p0 + t[:, None] * e
    dist = np.linalg.norm(nearest - centre, axis=1)
    radius = 0.5 * (v.r0 + v.r1)
    ok = (dist > body.reach_mm + 3.0) & (dist < body.reach_mm + FEEDER_SEARCH_MM) & (radius >= VESSEL_RADIUS_MM[0])
    ok[chosen] = False
    if not ok.any():
        return None
    j = int(np.flatnonzero(ok)[np.argmin(dist[ok])])
    start = nearest[j]
    toward = normalise(start - centre)
    end = centre + toward * (body.extent(toward) - 0.5)
    r = min(float(radius[j]), rng.uniform(*FEEDER_RADIUS_MM))
    return Tubes(start[None], end[None], np.array([r]), np.array([0.85 * r]))


def _draw_wall_to(scene: Scene, body: NoduleBody, offset: np.ndarray, record: dict, rng: np.random.Generator) -> None:
    """Wall tissue where (distance to the wall) + (distance to the nodule) <= gap + breadth."""
    gap = record["pleural_gap_mm"]
    breadth = max(MIN_CONTACT_BREADTH_MM, rng.uniform(*CONTACT_BREADTH) * body.record["radius_mm"])
    box, inside = _box_and_body(scene, body, offset, gap + breadth + 3.0)
    lung = scene.lung(box)
    spacing = scene.grid.spacing
    to_wall = ndimage.distance_transform_edt(lung, sampling=spacing)
    to_nodule = ndimage.distance_transform_edt(~inside, sampling=spacing)
    # gap is taken between voxel boxes, the distances here between centres: one pixel more
    fill = lung & ~inside & ~scene.occupied[box] & (to_wall + to_nodule <= gap + float(spacing[1]) + breadth)
    value = rng.uniform(*HU_PLEURAL_TISSUE)
    scene.labels[box][fill] = 0
    scene.hu[box][fill] = value
    record.update(contact_breadth_mm=float(breadth), hu_pleural_tissue=float(value))


def place(scene: Scene, body: NoduleBody, planned: str, rng: np.random.Generator) -> Placement:
    """Place one nodule by its planned class; fall back to isolated, then to isolated with
    no clearance, then to the deepest lung point, so that every finding is placed."""
    attempts = {JUXTA_PLEURAL: _place_juxta_pleural, JUXTA_VASCULAR: _place_juxta_vascular}
    order = [(planned, attempts.get(planned, _place_isolated))]
    if planned != ISOLATED:
        order.append((ISOLATED, _place_isolated))
    order.append((ISOLATED, lambda s, b, r: _place_isolated(s, b, r, relaxed=True)))
    record: dict = {}
    for attachment, attempt in order:
        found = attempt(scene, body, rng)
        if found is not None:
            offset, centre, record = found
            break
    else:
        attachment, record = ISOLATED, dict(fallback="deepest lung point")
        points = scene.depth.lung_points(min_depth_mm=0.0)
        # clear of the nodules already placed where the lungs leave room: two bodies drawn
        # into each other would be one blob in the image and two cut labels in the mask
        clear = [p for p in points if _far_from_others(scene, p, body.reach_mm)]
        points = np.asarray(clear) if clear else points
        deepest = points[np.argmax(scene.depth.at(points))] if len(points) else \
            np.asarray(scene.grid.shape) * scene.grid.spacing / 2.0
        offset, centre = _snap(scene, body, deepest)
    record["planned_attachment"] = planned
    if attachment == JUXTA_PLEURAL:
        _draw_wall_to(scene, body, offset, record, rng)
    box, inside = _box_and_body(scene, body, offset, 0.0)
    scene.occupied[box] |= inside
    scene.placed.append((centre, body.reach_mm))
    return Placement(offset, centre, attachment, record)


def keep_out(placements: list[Placement], bodies: list[NoduleBody], grid: Grid) -> np.ndarray:
    """Where no vessel or airway is drawn: each nodule's body, and unless it is
    juxta-vascular (its vessels end on its surface) every voxel within VESSEL_MARGIN_MM of it."""
    out = np.zeros(grid.shape, dtype=bool)
    for placement, body in zip(placements, bodies):
        grown = body.body if placement.attachment == JUXTA_VASCULAR else \
            box_gap(body.body, grid.spacing) <= VESSEL_MARGIN_MM
        hit = overlap(placement.offset, grown.shape, 0, grid.shape)
        if hit is not None:
            out[hit[1]] |= grown[hit[0]]
    return out


def contact(consensus: np.ndarray, offset: np.ndarray, labels: np.ndarray, vessel: np.ndarray,
            grid: Grid) -> tuple[float, float]:
    """Share of the consensus surface within CONTACT_MM of wall tissue (non-lung) and of
    vessel voxels, measured on a CONTACT_GRID_MM isotropic grid (nearest neighbour) so that
    thick slices count like thin ones."""
    if not consensus.any():
        return float("nan"), float("nan")
    box, truth = placed_box(consensus, offset, np.ceil(2.0 * CONTACT_MM / grid.spacing).astype(int) + 1, grid.shape)
    zoom = grid.spacing / CONTACT_GRID_MM
    iso = lambda m: ndimage.zoom(m.astype(np.uint8), zoom, order=0, grid_mode=True, mode="nearest") > 0  # noqa: E731
    truth_iso = iso(truth)
    surface = truth_iso & ~ndimage.binary_erosion(truth_iso)
    if not surface.any():
        return float("nan"), float("nan")
    step = grid.spacing * np.asarray(truth.shape) / np.asarray(truth_iso.shape)
    shares = []
    for tissue in (wall_tissue(labels[box]), vessel[box]):
        tissue_iso = iso(tissue)
        near = ndimage.distance_transform_edt(~tissue_iso, sampling=step)[surface] <= CONTACT_MM \
            if tissue_iso.any() else np.zeros(1, dtype=bool)
        shares.append(float(near.mean()))
    return shares[0], shares[1]


def wall_distance(consensus: np.ndarray, offset: np.ndarray, labels: np.ndarray, grid: Grid,
                  reach_mm: float = WALL_DISTANCE_REACH_MM) -> float:
    """Gap (mm) between the consensus and the nearest wall tissue, voxel centre to voxel
    centre (one voxel or less: touching); ``reach_mm`` when none lies that close."""
    if not consensus.any():
        return float("nan")
    box, truth = placed_box(consensus, offset, np.ceil(reach_mm / grid.spacing).astype(int), grid.shape)
    wall = wall_tissue(labels[box])
    if not wall.any():
        return float(reach_mm)
    gap = ndimage.distance_transform_edt(~wall, sampling=grid.spacing)[truth].min()
    return float(min(gap, reach_mm))


def wall_tissue(labels: np.ndarray) -> np.ndarray:
    """Wall tissue around a lung nodule: whatever is not lung or airway lumen."""
    return labels == 0


def realised_class(pleural: float, vessel: float) -> str:
    """The attachment a rendered nodule shows: wall first, then vessel contact."""
    if pleural >= 0.05:
        return JUXTA_PLEURAL
    if vessel > 0.0:
        return JUXTA_VASCULAR
    return ISOLATED
