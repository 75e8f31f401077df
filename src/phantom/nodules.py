"""Nodules: a physical shape and a density, rendered into the chest.

The truth of the built-in dataset is the readers' consensus (voxels >= 50 % of a nodule's
readers marked). The image is *not* drawn from it: each nodule's physical shape is one of
its readers' masks, drawn at random, with its surface moved by a smooth random field
(``shape_noise_mm``) and blurred by a partial-volume edge that LIDC's margin rating widens
(poorly defined margins are fuzzier). So the consensus edge sits at a different contrast
level from nodule to nodule, as readers' edges do on real CT (``edge_contrast``).

Density and internal structure follow LIDC's per-reading attributes:
* solid: -10..+100 HU with a smooth internal heterogeneity;
* part solid: mottled ground glass with a solid component (> -160 HU) that is not always
  concentric;
* ground glass: -750..-600 HU (published: <= -600; above -472 suggests invasion), mottled;
* calcified (decided per nodule by the dataset, from the readers' calcification ratings):
  popcorn, laminated, diffuse, eccentric or central calcium >= 250 HU in a solid nodule;
* cavitary: an eccentric air cavity inside a solid wall;
* spiculated (LIDC spiculation rating): thin solid strands out of the surface, which the
  readers' outlines, and hence the truth, leave out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from src.data.groups import texture_class
from src.phantom.shapes import Grid, Tubes, normalise, overlap, random_unit, signed_distance, smooth_noise

HU_SOLID = (-10.0, 100.0)
SOLID_HETEROGENEITY_HU = (10.0, 30.0)        # sd of the smooth texture inside solid tissue
SOLID_GRAIN_MM = 1.5
HU_GROUND_GLASS = (-750.0, -600.0)
GROUND_GLASS_MOTTLE_HU = (30.0, 60.0)
GROUND_GLASS_GRAIN_MM = 1.0
HU_SOLID_COMPONENT = (-120.0, 60.0)          # above the -160 HU solid-component cut-off
SOLID_SHARE = (0.15, 0.6)                    # of a part-solid nodule's volume
SOLID_OFFSET = 0.6                           # component centre up to this x the radius off centre
HU_CALCIUM = (250.0, 1000.0)
CALCIUM_CORE = (0.35, 0.6)                   # central calcification: x the radius
LAMINA_PERIOD_MM = (1.5, 3.0)
POPCORN_CLUMPS = (3, 7)
POPCORN_RADIUS_MM = (0.8, 2.0)
ECCENTRIC_RADIUS = (0.25, 0.45)              # x the radius
HU_CAVITY = (-980.0, -880.0)
CAVITY_RADIUS = (0.3, 0.55)                  # x the radius
CAVITY_WALL_MM = (1.5, 3.0)
SHAPE_GRAIN_MM = 2.0                         # correlation length of the surface perturbation
MARGIN_BLUR = (1.0, 2.5)                     # x edge_mm at a sharp (5) .. poorly defined (1) margin
SPICULE_MIN_RATING = 2.0                     # LIDC spiculation (1 none .. 5 marked) that grows strands
SPICULES_PER_POINT = (2, 4)                  # strands per rating point above 1
SPICULE_RADIUS_MM = (0.3, 0.7)
SPICULE_LENGTH_MM = (3.0, 8.0)               # plus 0.3 x the radius
CALCIFICATIONS = {1: "popcorn", 2: "laminated", 3: "diffuse", 4: "eccentric", 5: "central"}   # LIDC codes


def density_class(texture: float, calcification: str, cavitary: bool) -> str:
    """solid | part-solid | ground-glass | calcified | cavitary."""
    if calcification != "none":
        return "calcified"
    if cavitary:
        return "cavitary"
    # an unrated texture is drawn solid, the commonest kind
    return texture_class(texture) if np.isfinite(texture) else "solid"


@dataclass
class NoduleSpec:
    """One finding to render: its readers' markings and what they said of it."""
    reader_masks: np.ndarray            # bool (n_readers, z, y, x), a crop on the scan's grid
    texture: float = 5.0                # mean LIDC rating: 1 ground glass .. 3 part solid .. 5 solid
    margin: float = 4.0                 # mean LIDC rating: 1 poorly defined .. 5 sharp
    spiculation: float = 1.0            # mean LIDC rating: 1 none .. 5 marked
    calcification: str = "none"         # one of CALCIFICATIONS' values, or "none"
    cavitary: bool = False
    attachment: str = "isolated"        # planned: isolated | juxta-pleural | juxta-vascular

    @property
    def consensus(self) -> np.ndarray:
        return self.reader_masks.mean(axis=0) >= 0.5

    @property
    def density(self) -> str:
        return density_class(self.texture, self.calcification, self.cavitary)


@dataclass
class NoduleBody:
    """A nodule ready to place: everything on a padded crop of the scan's grid."""
    alpha: np.ndarray                   # float32 occupancy (partial-volume edge, spicules)
    hu: np.ndarray                      # float32 the nodule's own HU
    body: np.ndarray                    # bool physical shape | consensus: what nothing else may enter
    consensus: np.ndarray               # bool the truth
    reader_masks: np.ndarray            # bool (n, ...) padded like the rest
    pad: np.ndarray                     # (3,) voxels of padding around the readers' crop
    centre: np.ndarray                  # (3,) voxel of the consensus centroid in the crop
    points_mm: np.ndarray               # (n, 3) body voxels, mm from the centre
    record: dict = field(default_factory=dict)

    @property
    def reach_mm(self) -> float:
        """Largest distance of the body from the centre."""
        return float(np.sqrt((self.points_mm ** 2).sum(axis=1).max())) if len(self.points_mm) else 0.0

    def extent(self, direction: np.ndarray) -> float:
        """How far (mm) the body reaches from the centre along a unit direction."""
        return float((self.points_mm @ direction).max()) if len(self.points_mm) else 0.0


def build_body(spec: NoduleSpec, spacing: np.ndarray, edge_mm: float, shape_noise_mm: float,
               rng: np.random.Generator) -> NoduleBody:
    """The physical nodule of ``spec`` (module docstring); every draw goes to ``record``."""
    spacing = np.asarray(spacing, dtype=float)
    radius = _equivalent_radius(spec.consensus if spec.consensus.any() else spec.reader_masks.any(axis=0), spacing)
    blur_mm = edge_mm * float(np.interp(spec.margin, [1.0, 5.0], MARGIN_BLUR[::-1]))
    n_spicules = 0
    if spec.spiculation >= SPICULE_MIN_RATING:
        n_spicules = int(round((spec.spiculation - 1.0) * rng.uniform(*SPICULES_PER_POINT)))
    spicule_reach = SPICULE_LENGTH_MM[1] + 0.3 * radius if n_spicules else 0.0
    pad = np.ceil((3.0 * blur_mm + shape_noise_mm * 3.0 + spicule_reach + 1.5) / spacing).astype(int)
    masks = np.pad(spec.reader_masks, [(0, 0)] + [(p, p) for p in pad])
    consensus = masks.mean(axis=0) >= 0.5
    reader = int(rng.integers(len(masks)))
    sdf = signed_distance(masks[reader], spacing)
    if shape_noise_mm > 0:
        sdf += shape_noise_mm * smooth_noise(sdf.shape, SHAPE_GRAIN_MM / spacing, rng)
    physical = sdf < 0
    if not physical.any():                     # a perturbation that erased a tiny marking
        physical = masks[reader].copy()
    alpha = np.clip(0.5 - sdf / float(spacing.min()), 0.0, 1.0)
    if blur_mm > 0:
        alpha = ndimage.gaussian_filter(alpha, blur_mm / spacing)
    region = consensus if consensus.any() else physical
    centre = np.argwhere(region).mean(axis=0)
    record = dict(render_reader=reader, shape_noise_mm=shape_noise_mm, edge_blur_mm=blur_mm,
                  radius_mm=radius, density=spec.density)
    hu = _density(spec, physical, spacing, radius, rng, record)
    if n_spicules:
        _grow_spicules(alpha, hu, sdf, centre, spacing, radius, n_spicules, rng)
    record["spicules"] = n_spicules
    body = physical | consensus
    points = (np.argwhere(body) - centre) * spacing
    return NoduleBody(alpha.astype(np.float32), hu.astype(np.float32), body, consensus, masks, pad, centre,
                      points, record)


def _equivalent_radius(mask: np.ndarray, spacing: np.ndarray) -> float:
    return float(np.cbrt(3.0 * mask.sum() * np.prod(spacing) / (4.0 * np.pi)))


def _density(spec: NoduleSpec, physical: np.ndarray, spacing: np.ndarray, radius: float,
             rng: np.random.Generator, record: dict) -> np.ndarray:
    """The nodule's HU over its crop, by density class (module docstring)."""
    density = spec.density
    if density in ("ground-glass", "part-solid"):
        base = rng.uniform(*HU_GROUND_GLASS)
        mottle = rng.uniform(*GROUND_GLASS_MOTTLE_HU)
        hu = base + mottle * smooth_noise(physical.shape, GROUND_GLASS_GRAIN_MM / spacing, rng)
        record.update(hu_ground_glass=base, mottle_hu=mottle)
        if density == "part-solid":
            _add_solid_component(hu, physical, spacing, radius, rng, record)
        return hu
    base = rng.uniform(*HU_SOLID)
    sd = rng.uniform(*SOLID_HETEROGENEITY_HU)
    hu = base + sd * smooth_noise(physical.shape, SOLID_GRAIN_MM / spacing, rng)
    record.update(hu_solid=base, heterogeneity_hu=sd)
    if density == "calcified":
        _calcify(hu, physical, spacing, radius, spec.calcification, rng, record)
    elif density == "cavitary":
        _cavitate(hu, physical, spacing, radius, rng, record)
    return hu


def _interior_point(physical: np.ndarray, spacing: np.ndarray, max_offset_mm: float,
                    rng: np.random.Generator) -> np.ndarray:
    """A random voxel of the shape within max_offset_mm of its deepest point (voxel coords)."""
    depth = ndimage.distance_transform_edt(physical, sampling=spacing)
    deepest = np.array(np.unravel_index(np.argmax(depth), depth.shape), dtype=float)
    inside = np.argwhere(physical)
    near = inside[np.linalg.norm((inside - deepest) * spacing, axis=1) <= max_offset_mm]
    return near[rng.integers(len(near))].astype(float) if len(near) else deepest


def _distance_mm(shape: tuple[int, ...], point: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    axes = [(np.arange(n) - p) * s for n, p, s in zip(shape, point, spacing)]
    return np.sqrt(axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2)


def _add_solid_component(hu, physical, spacing, radius, rng, record) -> None:
    """A solid blob around a point that may lie off centre, filling a drawn share of the
    nodule; its edge is a smooth 1 mm ramp."""
    point = _interior_point(physical, spacing, SOLID_OFFSET * radius, rng)
    dist = _distance_mm(physical.shape, point, spacing) + 0.3 * radius * smooth_noise(physical.shape, 2.0 / spacing, rng)
    share = rng.uniform(*SOLID_SHARE)
    cut = float(np.quantile(dist[physical], share))
    weight = np.clip((cut - dist) / 1.0 + 0.5, 0.0, 1.0)
    value = rng.uniform(*HU_SOLID_COMPONENT)
    hu += (value - hu) * weight
    offset = np.linalg.norm((point - np.argwhere(physical).mean(axis=0)) * spacing)
    record.update(solid_share=share, hu_solid_component=value, solid_offset_mm=float(offset))


def _calcify(hu, physical, spacing, radius, pattern, rng, record) -> None:
    value = rng.uniform(*HU_CALCIUM)
    depth = ndimage.distance_transform_edt(physical, sampling=spacing)
    deepest = np.array(np.unravel_index(np.argmax(depth), depth.shape), dtype=float)
    if pattern == "diffuse":
        weight = np.clip(depth / 1.0, 0.0, 1.0)
    elif pattern == "central":
        r = rng.uniform(*CALCIUM_CORE) * radius
        weight = np.clip(r - _distance_mm(physical.shape, deepest, spacing) + 0.5, 0.0, 1.0)
    elif pattern == "laminated":
        period = rng.uniform(*LAMINA_PERIOD_MM)
        rings = 0.5 + 0.5 * np.cos(2.0 * np.pi * (depth.max() - depth) / period)     # calcium at the centre
        weight = np.clip((rings - 0.4) / 0.3, 0.0, 1.0) * (depth > 0.5)
        record["lamina_period_mm"] = period
    elif pattern == "popcorn":
        weight = np.zeros(physical.shape)
        for _ in range(int(rng.integers(POPCORN_CLUMPS[0], POPCORN_CLUMPS[1] + 1))):
            point = _interior_point(physical, spacing, 0.8 * radius, rng)
            r = rng.uniform(*POPCORN_RADIUS_MM)
            np.maximum(weight, np.clip(r - _distance_mm(physical.shape, point, spacing) + 0.5, 0.0, 1.0), out=weight)
    else:                                                   # eccentric
        point = _interior_point(physical, spacing, 0.7 * radius, rng)
        r = rng.uniform(*ECCENTRIC_RADIUS) * radius
        weight = np.clip(r - _distance_mm(physical.shape, point, spacing) + 0.5, 0.0, 1.0)
    weight = weight * physical
    hu += (value - hu) * weight
    record.update(calcification=pattern, hu_calcium=value)


def _cavitate(hu, physical, spacing, radius, rng, record) -> None:
    """An air cavity inside a solid wall of drawn thickness, off centre where it fits."""
    wall = rng.uniform(*CAVITY_WALL_MM)
    depth = ndimage.distance_transform_edt(physical, sampling=spacing)
    room = float(depth.max()) - wall
    if room <= 0.5:
        record.update(cavity_radius_mm=0.0)
        return
    r = min(rng.uniform(*CAVITY_RADIUS) * radius, room)
    ok = np.argwhere(depth >= wall + r)
    point = ok[rng.integers(len(ok))].astype(float) if len(ok) else \
        np.array(np.unravel_index(np.argmax(depth), depth.shape), dtype=float)
    weight = np.clip(r - _distance_mm(physical.shape, point, spacing) + 0.5, 0.0, 1.0)
    value = rng.uniform(*HU_CAVITY)
    hu += (value - hu) * weight
    record.update(cavity_radius_mm=float(r), cavity_wall_mm=wall, hu_cavity=value)


def _grow_spicules(alpha, hu, sdf, centre, spacing, radius, n, rng) -> None:
    """Thin solid strands from random surface points outward (into alpha and hu)."""
    surface = np.argwhere((sdf > -float(spacing.max())) & (sdf <= 0))
    if not len(surface):
        return
    starts = surface[rng.integers(len(surface), size=n)] * spacing
    out = normalise(normalise(starts - centre * spacing) + 0.35 * random_unit(rng, n))
    length = rng.uniform(*SPICULE_LENGTH_MM, n) + 0.3 * radius
    r0 = rng.uniform(*SPICULE_RADIUS_MM, n)
    strands = Tubes(starts, starts + out * length[:, None], r0, 0.4 * r0)
    solid = float(np.median(hu[sdf < 0])) if (sdf < 0).any() else HU_SOLID[1]
    for box, occ in strands.occupancy(Grid(alpha.shape, spacing)):
        grow = occ > alpha[box]
        alpha[box][grow] = occ[grow]
        hu[box][grow] = solid


def paint_body(nodule: NoduleBody, offset: np.ndarray, hu: np.ndarray) -> None:
    """hu = background + (nodule - background) * alpha, the crop placed at ``offset`` (its
    [0, 0, 0] voxel, padding included) and cut where it leaves the volume."""
    hit = overlap(offset, nodule.alpha.shape, 0, hu.shape)
    if hit is None:
        return
    src, dst = hit
    bg = hu[dst]
    bg += (nodule.hu[src] - bg) * nodule.alpha[src]


def edge_contrast(hu: np.ndarray, consensus: np.ndarray, lung: np.ndarray) -> float:
    """Where the consensus edge sits between the nodule and its surroundings: (edge - bg) /
    (core - bg), with edge the mean HU of the voxel layers just inside and just outside the
    consensus, core the median HU of its interior (eroded once, or all of it), and bg the
    median HU of the aerated lung (< -500 HU) 3..5 voxels outside. 0.5 is the half-way
    level that half-max thresholds at. Arrays: a box around the nodule."""
    if not consensus.any():
        return float("nan")
    inner = consensus & ~ndimage.binary_erosion(consensus)
    grown = ndimage.binary_dilation(consensus)
    outer = grown & ~consensus
    interior = ndimage.binary_erosion(consensus)
    core = float(np.median(hu[interior if interior.any() else consensus]))
    shell = ndimage.binary_dilation(consensus, iterations=5) & ~ndimage.binary_dilation(consensus, iterations=2)
    air = shell & lung & (hu < -500)
    if not air.any() or not outer.any():
        return float("nan")
    bg = float(np.median(hu[air]))
    if abs(core - bg) < 50.0:
        return float("nan")
    edge = 0.5 * (float(hu[inner].mean()) + float(hu[outer].mean()))
    return (edge - bg) / (core - bg)
