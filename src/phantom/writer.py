"""Built-in dataset: real LIDC nodules inside synthetic chest CT, written in LUNA16 layout.

For one LIDC scan (``lidc.py``) this module picks a z window around its nodules, keeps the
scan's real pixel spacing and slice positions, asks ``anatomy.py`` for a CT around the
nodules, and writes the LUNA16 files plus the masks that LUNA16 does not ship:

    subsetK/<uid>.mhd/.raw            int16 HU
    seg-lungs-LUNA16/<uid>.mhd        3 right lung, 4 left lung, 5 airways
    masks/<uid>.mhd                   fine label mask: k = k-th annotated nodule (>= 50% readers)
    masks/readers/<uid>.mhd           bit r set where reader slot r marked an annotated nodule

and one row per finding for annotations.csv / annotations_excluded.csv / candidates_V2.csv /
nodules.csv / scans.csv (assembled by ``make_phantom.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from src.config import PhantomConfig
from src.data.geometry import Geometry
from src.data.io import write_image
from src.errors import ConfigError
from src.phantom.anatomy import DEFAULT_PROFILES, PROFILES, NoduleSpec, ScannerProfile, render_ct
from src.phantom.lidc import IMAGE_SIZE, LidcNodule, LidcScan


@dataclass
class PhantomResult:
    seriesuid: str
    rows: list[dict]             # one per nodule (annotated or excluded)
    candidates: list[dict]       # vessel-like false candidates (class 0)
    scan_row: dict


NONSOLID_TEXTURE = 3.5   # mean reader texture at or below this: part-solid or ground glass (src.data.groups)


def is_annotated(nodule: LidcNodule, cfg: PhantomConfig) -> bool:
    """LUNA16's reference standard: >= 3 mm and marked by >= 3 of 4 readers."""
    return nodule.n_readers >= cfg.min_readers and nodule.diameter_mm >= cfg.min_diameter_mm


def scanner_profile(cfg: PhantomConfig, rng: np.random.Generator) -> ScannerProfile:
    """One profile drawn from ``phantom.profiles`` (the built-in three by default), its noise
    scaled by ``phantom.noise_scale``."""
    names = tuple(cfg.profiles) or DEFAULT_PROFILES
    unknown = sorted(set(names) - set(PROFILES))
    if unknown:
        raise ConfigError(f"phantom.profiles: unknown {unknown}; valid: {', '.join(sorted(PROFILES))}")
    profile = PROFILES[sorted(names)[int(rng.integers(len(names)))]]
    if cfg.noise_scale != 1.0:
        profile = replace(profile, noise_sd_hu=profile.noise_sd_hu * cfg.noise_scale)
    return profile


def choose_z_window(scan: LidcScan, cfg: PhantomConfig) -> tuple[int, int]:
    """The ``max_slices`` window holding the most annotated (then any) whole nodules."""
    n = len(scan.zvals)
    if n <= cfg.max_slices:
        return 0, n
    spans = [(nod.box_zyx[0].start, nod.box_zyx[0].stop, is_annotated(nod, cfg)) for nod in scan.nodules]
    centre = np.mean([(a + b) / 2 for a, b, _ in spans])

    def score(start: int):
        stop = start + cfg.max_slices
        inside = [ann for a, b, ann in spans if a >= start and b <= stop]
        return sum(inside), len(inside), -abs(start + cfg.max_slices / 2 - centre)
    start = max(range(n - cfg.max_slices + 1), key=score)
    return start, start + cfg.max_slices


def scan_geometry(scan: LidcScan, z0: int, z1: int) -> Geometry:
    # The database stores no x/y origin; centre the 512 x 512 field on the scanner axis.
    half_fov = scan.pixel_spacing * IMAGE_SIZE / 2.0
    return Geometry.axis_aligned((-half_fov, -half_fov, float(scan.zvals[z0])),
                                 (scan.pixel_spacing, scan.pixel_spacing, scan.slice_spacing),
                                 (z1 - z0, IMAGE_SIZE, IMAGE_SIZE))


def _local_box(nodule: LidcNodule, z0: int) -> tuple[slice, slice, slice]:
    z, y, x = nodule.box_zyx
    return slice(z.start - z0, z.stop - z0), y, x


def _centre_zyx(nodule: LidcNodule, z0: int) -> np.ndarray:
    """Centroid of the consensus (of any marking if readers never reach 50%)."""
    region = nodule.consensus if nodule.consensus.any() else nodule.fraction > 0
    local = np.argwhere(region).mean(axis=0)
    box = _local_box(nodule, z0)
    return local + np.array([box[0].start, box[1].start, box[2].start], dtype=float)


def build_phantom(scan: LidcScan, cfg: PhantomConfig, subset: int, out_dir: Path) -> PhantomResult:
    """Render and write one scan. Deterministic in (cfg.seed, LIDC scan id)."""
    rng = np.random.default_rng([cfg.seed, scan.scan_id])
    z0, z1 = choose_z_window(scan, cfg)
    geometry = scan_geometry(scan, z0, z1)
    inside = [n for n in scan.nodules if n.box_zyx[0].start >= z0 and n.box_zyx[0].stop <= z1]
    annotated = [n for n in inside if is_annotated(n, cfg)]
    profile = scanner_profile(cfg, rng)

    specs = [NoduleSpec(center_zyx=_centre_zyx(n, z0), radius_mm=n.diameter_mm / 2.0, texture=n.texture,
                        fraction=n.fraction, offset_zyx=tuple(s.start for s in _local_box(n, z0)))
             for n in inside]
    ct = render_ct(geometry.shape_zyx, tuple(geometry.spacing_zyx), scan.slice_thickness, specs,
                   profile, rng, edge_mm=cfg.edge_mm)

    labels = np.zeros(geometry.shape_zyx, dtype=np.uint8)
    readers = np.zeros(geometry.shape_zyx, dtype=np.uint8)
    for label, nodule in enumerate(annotated, start=1):
        box = _local_box(nodule, z0)
        labels[box][nodule.consensus] = label
        for r in range(nodule.n_readers):
            readers[box] |= (nodule.reader_masks[r] << r).astype(np.uint8)

    uid = scan.seriesuid
    write_image(ct.hu, geometry, out_dir / f"subset{subset}" / f"{uid}.mhd")
    write_image(ct.lung_labels, geometry, out_dir / "seg-lungs-LUNA16" / f"{uid}.mhd", compress=True)
    write_image(labels, geometry, out_dir / "masks" / f"{uid}.mhd", compress=True)
    write_image(readers, geometry, out_dir / "masks" / "readers" / f"{uid}.mhd", compress=True)

    rows = []
    for nodule, spec in zip(inside, specs):
        x, y, z = geometry.voxel_to_world(spec.center_zyx)
        rows.append(dict(seriesuid=uid, coordX=x, coordY=y, coordZ=z, diameter_mm=nodule.diameter_mm,
                         texture=nodule.texture, malignancy=nodule.malignancy, n_readers=nodule.n_readers,
                         annotated=is_annotated(nodule, cfg)))
    candidates = [dict(seriesuid=uid, coordX=x, coordY=y, coordZ=z, **{"class": 0})
                  for x, y, z in geometry.voxel_to_world(ct.vessel_candidates_zyx).reshape(-1, 3)]
    scan_row = dict(seriesuid=uid, patient_id=scan.patient_id, subset=subset, lidc_scan_id=scan.scan_id,
                    profile=profile.name, noise_sd_hu=profile.noise_sd_hu, slice_thickness_mm=scan.slice_thickness,
                    slice_spacing_mm=scan.slice_spacing, pixel_spacing_mm=scan.pixel_spacing,
                    n_slices=z1 - z0, first_lidc_slice=z0, n_annotated=len(annotated),
                    n_excluded=len(inside) - len(annotated))
    return PhantomResult(uid, rows, candidates, scan_row)


# ----------------------------------------------------------------------------- dataset

LUNA_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]


def annotated_in_window(scan: LidcScan, cfg: PhantomConfig) -> list[LidcNodule]:
    z0, z1 = choose_z_window(scan, cfg)
    return [n for n in scan.nodules if is_annotated(n, cfg) and n.box_zyx[0].start >= z0 and n.box_zyx[0].stop <= z1]


def select_scans(cfg: PhantomConfig) -> list[LidcScan]:
    """``n_scans`` LIDC scans (slice thickness within the configured range, >= 1 annotated
    nodule in the z window), chosen by a seeded shuffle of the database ids, so the same
    seed gives the same scans. With ``nonsolid_fraction`` > 0, a scan holding a non-solid
    nodule is always taken and another only while the non-solid share is above the target."""
    from src.phantom.lidc import candidate_scan_ids, load_lidc_scan

    ids = candidate_scan_ids(cfg.max_slice_thickness_mm, cfg.min_slice_thickness_mm)
    order = np.random.default_rng(cfg.seed).permutation(ids)
    chosen: list[LidcScan] = []
    n_nodules = n_nonsolid = 0
    for scan_id in order:
        scan = load_lidc_scan(int(scan_id))
        if scan is None:
            continue
        annotated = annotated_in_window(scan, cfg)
        nonsolid = sum(n.texture <= NONSOLID_TEXTURE for n in annotated)
        if not annotated or (cfg.nonsolid_fraction > 0 and not nonsolid
                             and n_nonsolid < cfg.nonsolid_fraction * (n_nodules + len(annotated))):
            continue
        chosen.append(scan)
        n_nodules, n_nonsolid = n_nodules + len(annotated), n_nonsolid + nonsolid
        if len(chosen) == cfg.n_scans:
            return chosen
    raise ConfigError(f"only {len(chosen)} LIDC scans qualify; asked for {cfg.n_scans}")


def _render_one(job: tuple[LidcScan, PhantomConfig, int, Path]) -> PhantomResult:
    return build_phantom(*job)


def generate_dataset(cfg: PhantomConfig, out_dir: Path) -> "pd.DataFrame":
    """Write the whole LUNA16-layout folder; returns scans.csv as a table."""
    import pandas as pd

    from src.utils import atomic_to_csv, parallel_map

    scans = select_scans(cfg)
    n_subsets = min(cfg.n_subsets, len(scans))
    jobs = [(scan, cfg, i % n_subsets, out_dir) for i, scan in enumerate(scans)]
    results = parallel_map(_render_one, jobs, cfg.workers, desc="phantom scans")

    nodules = pd.DataFrame([r for res in results for r in res.rows])
    annotated = nodules[nodules["annotated"]].drop(columns="annotated")
    excluded = nodules[~nodules["annotated"]].drop(columns="annotated")
    positives = annotated[LUNA_COLUMNS[:4]].assign(**{"class": 1})
    candidates = pd.concat([positives, pd.DataFrame([c for res in results for c in res.candidates])])
    tables = {
        "annotations.csv": annotated[LUNA_COLUMNS],
        "annotations_excluded.csv": excluded[LUNA_COLUMNS],
        "candidates_V2.csv": candidates.sort_values(["seriesuid", "class"], kind="stable"),
        "nodules.csv": annotated,
        "scans.csv": pd.DataFrame([res.scan_row for res in results]),
    }
    for name, table in tables.items():
        atomic_to_csv(table, out_dir / name, float_format="%.4f")
    return tables["scans.csv"]


def stamp(cfg: PhantomConfig) -> str:
    """Content of ``phantom.json``: what was generated, so a rerun can skip it."""
    import json

    from src.config import config_hash
    return json.dumps({"generator": "nodule-kd phantom v1", "config_hash": config_hash(cfg)}, indent=1)


def is_current(cfg: PhantomConfig, out_dir: Path) -> bool:
    path = Path(out_dir) / "phantom.json"
    return path.is_file() and path.read_text() == stamp(cfg) and (Path(out_dir) / "scans.csv").is_file()


def preview_items(out_dir: Path, n: int = 12) -> list[dict]:
    """Axial slices through the first ``n`` annotated nodules, read back through the
    LUNA16 loader (so the preview also proves the files round-trip)."""
    from src.data.luna16 import read_luna16

    items = []
    for record in read_luna16(out_dir):
        scan = record.load()
        for nod in scan.nodules:
            z, y, x = np.rint(scan.geometry.world_to_voxel(nod.center_xyz)).astype(int)
            half = int(max(24, 1.5 * nod.diameter_mm / scan.geometry.spacing_xyz[0]))
            box = (slice(max(y - half, 0), y + half), slice(max(x - half, 0), x + half))
            items.append(dict(image=scan.image[z][box],
                              masks={"fine": ((scan.fine_mask[z][box] == nod.fine_label), "lime")},
                              title=f"{record.seriesuid[-6:]} d={nod.diameter_mm:.1f}mm tex={nod.texture:.1f}"))
            if len(items) == n:
                return items
    return items


def clear_out_dir(out_dir: Path) -> None:
    """Empty a stale phantom folder; refuse to touch a folder the generator did not make
    (it could be a real LUNA16 download)."""
    import shutil

    out_dir = Path(out_dir)
    if not out_dir.exists() or not any(out_dir.iterdir()):
        out_dir.mkdir(parents=True, exist_ok=True)
        return
    if not (out_dir / "phantom.json").is_file():
        raise FileExistsError(f"{out_dir}: not empty and not made by make_phantom.py (no phantom.json); "
                              "choose another --out")
    (out_dir / "phantom.json").unlink()  # first: a crash from here on leaves no 'current' stamp
    for item in out_dir.iterdir():
        shutil.rmtree(item) if item.is_dir() else item.unlink()
