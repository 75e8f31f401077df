"""One built-in scan: a LIDC scan's real nodules rendered into a synthetic chest, written in
LUNA16 layout.

For one LIDC scan (``lidc.py``) this module picks a z window around its nodules, keeps the
scan's real pixel spacing and slice positions, asks ``render.py`` for a CT holding them
(each placed by its planned attachment class), and writes the LUNA16 files plus the masks
that LUNA16 does not ship:

    subsetK/<uid>.mhd/.raw            int16 HU
    seg-lungs-LUNA16/<uid>.mhd        3 right lung, 4 left lung, 5 airways
    masks/<uid>.mhd                   fine label mask: k = k-th annotated nodule (>= 50% readers)
    masks/readers/<uid>.mhd           bit r set where reader slot r marked an annotated nodule

with one row per finding and per scan for the tables ``dataset.py`` assembles.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.config import PhantomConfig
from src.data.geometry import Geometry
from src.data.io import write_image
from src.phantom.lidc import IMAGE_SIZE, LidcNodule, LidcScan
from src.phantom.nodules import NoduleSpec
from src.phantom.render import render_ct
from src.phantom.shapes import overlap


@dataclass(frozen=True)
class FindingPlan:
    """What the dataset decided for one finding before rendering (``dataset.plan_findings``)."""
    attachment: str
    calcification: str                  # nodules.CALCIFICATIONS value or "none"
    cavitary: bool


@dataclass
class PhantomResult:
    seriesuid: str
    rows: list[dict]             # one per nodule (annotated or excluded)
    excluded: list[dict]         # sub-3 mm nodules the renderer added (annotations_excluded.csv)
    candidates: list[dict]       # vessel-like false candidates (class 0)
    scan_row: dict


def is_annotated(nodule: LidcNodule, cfg: PhantomConfig) -> bool:
    """LUNA16's reference standard: >= 3 mm and marked by >= 3 of 4 readers."""
    return nodule.n_readers >= cfg.min_readers and nodule.diameter_mm >= cfg.min_diameter_mm


def choose_z_window(scan: LidcScan, cfg: PhantomConfig) -> tuple[int, int]:
    """The ``max_slices`` window holding the most annotated (then any) whole nodules; the
    middle one for a scan without nodules."""
    n = len(scan.zvals)
    if n <= cfg.max_slices:
        return 0, n
    spans = [(nod.box_zyx[0].start, nod.box_zyx[0].stop, is_annotated(nod, cfg)) for nod in scan.nodules]
    if not spans:
        start = (n - cfg.max_slices) // 2
        return start, start + cfg.max_slices
    centre = np.mean([(a + b) / 2 for a, b, _ in spans])

    def score(start: int):
        stop = start + cfg.max_slices
        inside = [ann for a, b, ann in spans if a >= start and b <= stop]
        return sum(inside), len(inside), -abs(start + cfg.max_slices / 2 - centre)
    start = max(range(n - cfg.max_slices + 1), key=score)
    return start, start + cfg.max_slices


def findings_in_window(scan: LidcScan, cfg: PhantomConfig) -> list[LidcNodule]:
    """The scan's findings whose every marking lies in the z window: what gets rendered."""
    z0, z1 = choose_z_window(scan, cfg)
    return [n for n in scan.nodules if n.box_zyx[0].start >= z0 and n.box_zyx[0].stop <= z1]


def scan_geometry(scan: LidcScan, z0: int, z1: int) -> Geometry:
    # The database stores no x/y origin; centre the 512 x 512 field on the scanner axis.
    half_fov = scan.pixel_spacing * IMAGE_SIZE / 2.0
    return Geometry.axis_aligned((-half_fov, -half_fov, float(scan.zvals[z0])),
                                 (scan.pixel_spacing, scan.pixel_spacing, scan.slice_spacing),
                                 (z1 - z0, IMAGE_SIZE, IMAGE_SIZE))


def _spec(nodule: LidcNodule, plan: FindingPlan) -> NoduleSpec:
    return NoduleSpec(reader_masks=nodule.reader_masks, texture=nodule.texture, margin=nodule.margin,
                      spiculation=nodule.spiculation, calcification=plan.calcification, cavitary=plan.cavitary,
                      attachment=plan.attachment)


def _stamp(volume: np.ndarray, crop: np.ndarray, offset: np.ndarray, value) -> None:
    """volume[crop placed at offset] |= value where crop is set (cut to the volume)."""
    hit = overlap(offset, crop.shape, 0, volume.shape)
    if hit is not None:
        volume[hit[1]] |= np.where(crop[hit[0]], value, 0).astype(volume.dtype)


def build_phantom(scan: LidcScan, plans: list[FindingPlan], cfg: PhantomConfig, subset: int,
                  out_dir: Path) -> PhantomResult:
    """Render and write one scan. Deterministic in (cfg, LIDC scan id, plans)."""
    rng = np.random.default_rng([cfg.seed, scan.scan_id])
    z0, z1 = choose_z_window(scan, cfg)
    geometry = scan_geometry(scan, z0, z1)
    inside = findings_in_window(scan, cfg)
    ct = render_ct(geometry.shape_zyx, tuple(geometry.spacing_zyx), scan.slice_thickness,
                   [_spec(n, p) for n, p in zip(inside, plans)], cfg, rng)

    labels = np.zeros(geometry.shape_zyx, dtype=np.uint8)
    readers = np.zeros(geometry.shape_zyx, dtype=np.uint8)
    rows, label = [], 0
    spacing = geometry.spacing_zyx
    for nodule, plan, rendered in zip(inside, plans, ct.nodules):
        annotated = is_annotated(nodule, cfg)
        if annotated:
            label += 1
            _stamp(labels, nodule.consensus, rendered.offset, label)
            for r in range(nodule.n_readers):
                _stamp(readers, nodule.reader_masks[r], rendered.offset, np.uint8(1 << r))
        x, y, z = geometry.voxel_to_world(rendered.centre_zyx / spacing)
        rows.append(dict(seriesuid=scan.seriesuid, coordX=x, coordY=y, coordZ=z, diameter_mm=nodule.diameter_mm,
                         texture=nodule.texture, malignancy=nodule.malignancy, n_readers=nodule.n_readers,
                         annotated=annotated, attachment=rendered.attachment,
                         density=rendered.body.record["density"], calcification=plan.calcification,
                         pleural_contact=rendered.pleural_contact, vessel_contact=rendered.vessel_contact,
                         wall_distance_mm=rendered.wall_distance_mm, edge_contrast=rendered.edge_contrast, margin=nodule.margin,
                         spiculation=nodule.spiculation, lobulation=nodule.lobulation,
                         **{k: v for k, v in {**rendered.body.record, **rendered.placement.record}.items()
                            if k not in ("density", "calcification")}))

    uid = scan.seriesuid
    write_image(ct.hu, geometry, out_dir / f"subset{subset}" / f"{uid}.mhd")
    write_image(ct.lung_labels, geometry, out_dir / "seg-lungs-LUNA16" / f"{uid}.mhd", compress=True)
    write_image(labels, geometry, out_dir / "masks" / f"{uid}.mhd", compress=True)
    write_image(readers, geometry, out_dir / "masks" / "readers" / f"{uid}.mhd", compress=True)

    excluded = [dict(seriesuid=uid, **dict(zip(("coordX", "coordY", "coordZ"), geometry.voxel_to_world(zyx))),
                     diameter_mm=d) for zyx, d in ct.micronodules]
    candidates = [dict(seriesuid=uid, coordX=x, coordY=y, coordZ=z, **{"class": 0})
                  for x, y, z in geometry.voxel_to_world(ct.vessel_candidates_zyx).reshape(-1, 3)]
    scan_row = dict(seriesuid=uid, patient_id=scan.patient_id, subset=subset, lidc_scan_id=scan.scan_id,
                    **ct.record, slice_thickness_mm=scan.slice_thickness, slice_spacing_mm=scan.slice_spacing,
                    pixel_spacing_mm=scan.pixel_spacing, n_slices=z1 - z0, first_lidc_slice=z0, n_annotated=label,
                    n_excluded=len(inside) - label)
    return PhantomResult(uid, rows, excluded, candidates, scan_row)
