"""Render one synthetic chest CT around real LIDC nodules: the order of the steps.

1. the chest (``body.py``, ``lungs.py``): drawn per scan, scaled to the field of view;
   the parenchyma with its per-scan conditions (dependent density, emphysema);
2. the trees (``trees.py``), grown in a coarse map of the lungs;
3. the nodules (``nodules.py``, ``placement.py``): each one's physical shape and density,
   placed as isolated, juxta-pleural or juxta-vascular (largest first);
4. distractors (``distractors.py``): pleural plaques before the trees are painted, scars
   and sub-3 mm nodules after;
5. the trees painted (never inside a nodule), then the nodules;
6. acquisition (``acquisition.py``): slice profile and kernel, then noise. In between, on
   the noise-free image, each nodule's consensus edge contrast is measured, and at the end
   its realised contact with the wall and the vessels.

Deterministic in (inputs, config, rng state).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from src.config import PhantomConfig
from src.errors import ConfigError
from src.phantom.acquisition import DEFAULT_PROFILES, PROFILES, ScannerProfile, add_noise, blur
from src.phantom.body import TRACHEA_WALL_MM, draw_anatomy
from src.phantom.distractors import add_micronodules, add_plaques, add_scars
from src.phantom.lungs import (LEFT_LUNG, RIGHT_LUNG, LungDepth, draw_conditions, lung_map, paint_chest, paint_emphysema,
                               place_frame)
from src.phantom.nodules import NoduleBody, NoduleSpec, build_body, edge_contrast, paint_body
from src.phantom.placement import Placement, Scene, contact, keep_out, place, realised_class, wall_distance
from src.phantom.shapes import Grid, Tubes, placed_box
from src.phantom.trees import airway_walls, grow_airways, grow_vessels, paint_trees, vessel_candidates


@dataclass
class RenderedNodule:
    placement: Placement
    body: NoduleBody
    attachment: str                     # realised: what the rendered volume shows
    pleural_contact: float              # share of the consensus surface within 1 mm of wall tissue
    vessel_contact: float               # ... of vessel voxels
    edge_contrast: float                # consensus edge level between surroundings (0) and core (1)
    wall_distance_mm: float             # consensus surface to the nearest wall tissue

    @property
    def offset(self) -> np.ndarray:
        """Volume voxel of the readers' crop's [0, 0, 0] (the padding left out)."""
        return self.placement.offset + self.body.pad

    @property
    def centre_zyx(self) -> np.ndarray:
        return self.placement.centre_mm


@dataclass
class RenderedCT:
    hu: np.ndarray                      # int16 (z, y, x), HU clipped to [-1024, 3071]
    lung_labels: np.ndarray             # uint8 (z, y, x): 3 right lung, 4 left lung, 5 airways, 0 else
    vessel: np.ndarray                  # bool (z, y, x): vessel voxels (occupancy >= 0.5)
    vessel_candidates_zyx: np.ndarray   # (n, 3) float voxel (z, y, x) of vessel-like false candidates
    nodules: list[RenderedNodule]       # in the order of the specs
    micronodules: list[tuple[np.ndarray, float]]   # sub-3 mm nodules: voxel (z, y, x), diameter mm
    record: dict                        # the scan's own draws


def scanner_profile(cfg: PhantomConfig, rng: np.random.Generator) -> tuple[ScannerProfile, float]:
    """One kernel drawn from ``phantom.profiles`` (the built-in four by default) and its noise
    sd, drawn in the kernel's range and scaled by ``phantom.noise_scale``."""
    names = tuple(cfg.profiles) or DEFAULT_PROFILES
    unknown = sorted(set(names) - set(PROFILES))
    if unknown:
        raise ConfigError(f"phantom.profiles: unknown {unknown}; valid: {', '.join(sorted(PROFILES))}")
    profile = PROFILES[sorted(names)[int(rng.integers(len(names)))]]
    return profile, float(rng.uniform(*profile.noise_sd_hu)) * cfg.noise_scale


def _airway_tubes(main: Tubes, tree: Tubes) -> Tubes:
    """Airways as solid tubes, walls included (what a nodule must keep clear of)."""
    wall = airway_walls(tree)
    return Tubes.concat([Tubes(main.p0, main.p1, main.r0 + TRACHEA_WALL_MM, main.r1 + TRACHEA_WALL_MM),
                         Tubes(tree.p0, tree.p1, tree.r0 + wall, tree.r1 + wall)])


def render_ct(shape_zyx: tuple[int, int, int], spacing_zyx: tuple[float, float, float],
              slice_thickness_mm: float, specs: list[NoduleSpec], cfg: PhantomConfig,
              rng: np.random.Generator) -> RenderedCT:
    """Render one chest CT around ``specs`` (module docstring)."""
    grid = Grid(tuple(int(n) for n in shape_zyx), np.asarray(spacing_zyx, dtype=np.float64))
    anat = draw_anatomy(rng)
    frame = place_frame(anat, grid, rng)
    conditions = draw_conditions(rng, cfg.dependent_density_probability, cfg.emphysema_probability)
    profile, noise_sd = scanner_profile(cfg, rng)

    hu, labels = paint_chest(anat, frame, conditions)
    depth = LungDepth.of(labels, grid)
    holes = paint_emphysema(conditions, frame, depth, hu, labels, rng)
    coarse = lung_map(anat, frame)
    vessels, forks = grow_vessels(anat, frame, coarse, rng)
    main, tree = grow_airways(anat, frame, coarse, rng)
    scene = Scene(grid, hu, labels, depth, vessels, forks, _airway_tubes(main, tree),
                  midline_x_mm=float(frame.to_mm(np.array([0.0, 0.0, 0.0]))[2]))

    bodies = [build_body(spec, grid.spacing, cfg.edge_mm, cfg.shape_noise_mm, rng) for spec in specs]
    placements: list[Placement | None] = [None] * len(specs)
    for i in sorted(range(len(specs)), key=lambda k: -bodies[k].reach_mm):
        placements[i] = place(scene, bodies[i], specs[i].attachment, rng)
    plaques = add_plaques(scene, cfg.plaque_probability, rng)

    vessel = paint_trees(anat, grid, scene.vessels, (main, tree), hu, labels, keep_out(placements, bodies, grid))
    micronodules = add_micronodules(scene, cfg.micronodules_per_scan, rng)
    scars = add_scars(scene, cfg.scar_probability, rng)
    for placement, body in zip(placements, bodies):
        paint_body(body, placement.offset, hu)
    candidates = vessel_candidates(scene.vessels, scene.forks, labels, scene.placed, grid, rng)

    blur(hu, grid, slice_thickness_mm, profile)
    lung = (labels == RIGHT_LUNG) | (labels == LEFT_LUNG)
    nodules = []
    for placement, body in zip(placements, bodies):
        box, truth = placed_box(body.consensus, placement.offset, 8, grid.shape)
        level = edge_contrast(hu[box], truth, lung[box])
        pleural, touching = contact(body.consensus, placement.offset, labels, vessel, grid)
        gap = wall_distance(body.consensus, placement.offset, labels, grid)
        nodules.append(RenderedNodule(placement, body, realised_class(pleural, touching), pleural, touching, level,
                                      gap))
    image = add_noise(hu, grid, profile, noise_sd, rng)
    record = dict(profile=profile.name, noise_sd_hu=noise_sd, scale=frame.scale, contrast=anat.contrast,
                  emphysema_volume=conditions.emphysema_volume, emphysema_holes=holes,
                  dependent_hu=conditions.dependent_hu, plaques=plaques, scars=scars,
                  micronodules=len(micronodules))
    return RenderedCT(image, labels, vessel, candidates, nodules,
                      [(c / grid.spacing, d) for c, d in micronodules], record)
