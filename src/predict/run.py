"""``infer.py`` behind the scenes: find the scans and the models, run mode 1 or 2 per scan,
write masks in the scan's geometry plus nodules.csv (mode 2 also submission.csv, and
candidates.csv: every candidate the classifier scored), and run.json (what produced them:
code version, config hash, checkpoints, threshold).

A failure on one scan (unreadable file, coordinates outside it, ...) is reported with the
file and the reason; the other scans carry on, and the caller exits non-zero at the end.
An interrupted run resumes: each finished scan's rows are kept (``InferenceOutputs.parts``)
and a rerun with the same models, settings and given coordinates reads them back instead
of predicting the scan again.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from src.config import InferConfig, code_version, config_hash
from src.data.folds import file_hash
from src.data.io import IMAGE_SUFFIXES, image_stem, is_image_path, read_image, write_image
from src.data.scan import ScanRecord
from src.data.tables import NODULE_COLUMNS, XYZ, check_coordinates, read_table
from src.errors import DataError
from src.layout import InferenceOutputs
from src.predict.detect import candidates, predict_volume
from src.predict.dicom_out import is_dicom_series, write_dicom_outputs
from src.predict.experiment import Models
from src.predict.measure import measure_findings
from src.predict.report import ScanSection, scan_section, write_report
from src.predict.segment import ModelVolume, Segmented, segment_nodule, to_model_volume
from src.utils import atomic_to_csv, atomic_write_text, progress

DEFAULT_CANDIDATE_DIAMETER_MM = 10.0   # candidates_V2.csv rows carry no size
REPORT_FINDINGS = 10                   # whole-scan mode: report.html shows each scan's most probable
NODULE_TABLE = ["seriesuid", "nodule_id", "coordX", "coordY", "coordZ", "diameter_mm", "volume_mm3", "mean_hu",
                "probability", "seg_probability", "fpr_probability", "source", "long_axis_mm", "texture_estimate",
                "lung_rads", "given_coordX", "given_coordY", "given_coordZ",
                "given_diameter_mm", "nodule_uid"]
MEASURED = ["long_axis_mm", "texture_estimate", "lung_rads"]    # of a finding's mask (src.predict.measure)
# a finding with a mask is sized on it (whole-scan candidates come sized by the map's core)
MASK_SIZE = ["volume_mm3", "diameter_mm", "mean_hu"]


# ----------------------------------------------------------------------------- inputs


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)
                  and not p.name.lower().endswith(".raw"))


def _folder_records(folder: Path) -> list[ScanRecord]:
    """A flat folder of image files, a folder of DICOM series folders, or one DICOM series."""
    files = _image_files(folder)
    if files:
        return [ScanRecord(image_stem(p), image_stem(p), p, source=str(folder)) for p in files]
    series = sorted(p for p in folder.iterdir() if p.is_dir() and any(q.is_file() for q in p.iterdir()))
    if series and not any(p.is_file() and not p.name.startswith(".") for p in folder.iterdir()):
        return [ScanRecord(p.name, p.name, p, source=str(folder)) for p in series]
    return [ScanRecord(image_stem(folder), image_stem(folder), folder, source=str(folder))]


def collect_inputs(inputs: list[str]) -> tuple[list[ScanRecord], list[str]]:
    """Scan records from LUNA16 folders, manifests, image files, flat folders of images,
    DICOM series folders (or folders of them), and the inputs that could not be read at all
    (as 'path: reason'). A LUNA16 folder's table rows of scans not on disk are ignored (a
    subset may be given)."""
    from src.data.luna16 import read_luna16
    from src.data.manifest import read_manifest

    records, failures = [], []
    for item in inputs:
        path = Path(item)
        try:
            if not path.exists():
                raise DataError(f"{path}: file or folder does not exist")
            if path.is_dir() and any(path.glob("subset*")):
                records += read_luna16(path, allow_partial=True)
            elif path.suffix.lower() == ".csv":
                records += read_manifest(path)
            elif path.is_dir() and not any(path.iterdir()):
                raise DataError(f"{path}: folder is empty")
            elif path.is_dir():
                records += _folder_records(path)
            elif is_image_path(path):
                records.append(ScanRecord(image_stem(path), image_stem(path), path, source=str(path)))
            else:
                raise DataError(f"{path}: not a LUNA16 folder, manifest (.csv), image file or DICOM folder")
        except DataError as err:
            failures.append(str(err))
    seen: dict[str, Path] = {}
    colliding = set()
    for r in records:
        if r.seriesuid in seen and seen[r.seriesuid] != r.image_path:
            failures.append(f"{r.image_path}: seriesuid {r.seriesuid} also names {seen[r.seriesuid]}; outputs would "
                            "collide (rename one)")
            colliding.add(r.seriesuid)
        seen.setdefault(r.seriesuid, r.image_path)
    return [r for r in records if r.seriesuid not in colliding], failures


def attach_coords(records: list[ScanRecord], coords_csv: str | Path) -> list[ScanRecord]:
    """Replace each record's nodule table with its rows of a LUNA16-style coordinate CSV
    (annotations.csv, candidates_V2.csv without diameters, or a manifest)."""
    path = Path(coords_csv)
    table = read_table(path, "coordinate table")
    if "diameter_mm" not in table.columns:  # candidates: no size known, segment within a default sphere
        table["diameter_mm"] = DEFAULT_CANDIDATE_DIAMETER_MM
    if "image" in table.columns:  # a manifest: rows without any coordinate list a scan, not a nodule
        table = table[table.reindex(columns=XYZ).notna().any(axis=1)]
    table = check_coordinates(table, path)
    if table.empty:
        raise DataError(f"{path}: no coordinate rows: nothing to segment")
    known = {r.seriesuid for r in records}
    unknown = sorted(set(table["seriesuid"]) - known)
    if len(unknown) == table["seriesuid"].nunique() and records:
        raise DataError(f"{path}: none of its {len(unknown)} seriesuid(s) is among the inputs (e.g. {unknown[0]}; "
                        f"inputs e.g. {records[0].seriesuid})")
    if unknown:
        print(f"note: {path}: {len(unknown)} seriesuid(s) not among the inputs (e.g. {unknown[0]}); ignored",
              file=sys.stderr)
    groups = {uid: df.reset_index(drop=True) for uid, df in table.groupby("seriesuid")}
    for r in records:
        r.nodules = groups.get(r.seriesuid, table.iloc[0:0][["seriesuid", *NODULE_COLUMNS]])
        r.source = str(path)
    return records


# ----------------------------------------------------------------------------- per scan


def segment_given(mv: ModelVolume, models: Models, cfg: InferConfig) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Mode 1: one label per given coordinate row (label = row number within the scan).
    Where the masks of two given nodules overlap (touching nodules, one blob found for
    both), each voxel goes to the nodule whose given centre is nearer, in its radii; each
    row is measured on the mask written for it."""
    scan = mv.scan
    labels = np.zeros(scan.geometry.shape_zyx, dtype=np.uint16)
    prob = np.zeros(scan.geometry.shape_zyx, dtype=np.float32)
    segmenter = models.segmenter(cfg)
    segs = []
    for nid, nod in enumerate(scan.nodules, start=1):
        seg = segment_nodule(mv, nod.center_xyz, nod.diameter_mm, segmenter, cfg, models.threshold)
        claim(labels, seg, nid, segs, scan.geometry.spacing_zyx)
        np.maximum(prob[seg.box], seg.prob, out=prob[seg.box])
        segs.append(seg)
    rows = []
    for nid, (nod, seg) in enumerate(zip(scan.nodules, segs), start=1):
        mask = labels[seg.box] == nid
        centre = scan.geometry.voxel_to_world(np.argwhere(mask).mean(0) + [s.start for s in seg.box]) \
            if mask.any() else np.full(3, np.nan)
        rows.append(dict(seriesuid=scan.seriesuid, nodule_id=nid, coordX=centre[0], coordY=centre[1],
                         coordZ=centre[2], volume_mm3=0.0, diameter_mm=0.0, mean_hu=np.nan,   # run_scan sizes written masks
                         probability=float(seg.prob[mask].mean()) if mask.any() else 0.0,
                         source="given sphere" if seg.fallback else "segmented",
                         given_coordX=nod.center_xyz[0], given_coordY=nod.center_xyz[1],
                         given_coordZ=nod.center_xyz[2], given_diameter_mm=nod.diameter_mm,
                         nodule_uid=nod.nodule_uid))
    return labels, prob, pd.DataFrame(rows, columns=NODULE_TABLE)


def claim(labels: np.ndarray, seg: Segmented, nid: int, earlier: list[Segmented], spacing_zyx) -> None:
    """Write nodule ``nid``'s mask into ``labels``: free voxels, and those of an earlier
    nodule (``earlier[label - 1]``) that lie nearer to this one's given centre, distances
    counted in each nodule's own radius."""
    lo = np.array([s.start for s in seg.box])
    region = labels[seg.box]          # a view: writes land in ``labels``
    contested = seg.mask & (region > 0)
    if contested.any():
        at = np.argwhere(contested)
        owners = region[contested].astype(int)
        spacing = np.asarray(spacing_zyx, float)

        def reach(points, centre, radius):   # distance to a given centre, in that nodule's radii
            return np.linalg.norm((points - centre) * spacing, axis=1) / max(radius, 1e-6)

        theirs = np.empty(len(at))
        for owner in np.unique(owners):
            other, of = earlier[owner - 1], owners == owner
            theirs[of] = reach(at[of] + lo - [s.start for s in other.box], other.centre_zyx, other.radius_mm)
        take = reach(at, seg.centre_zyx, seg.radius_mm) < theirs
        region[tuple(at[take].T)] = nid
    region[seg.mask & (region == 0)] = nid


def detect_all(mv: ModelVolume, models: Models, cfg: InferConfig, prob_model: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Mode 2: candidates anywhere in the lungs (needs a network) -> (labels, probability,
    the ``max_detections`` best, every candidate). ``prob_model``: the network's map of this
    scan when it is already at hand (the detection benchmark keeps them)."""
    if models.predictor is None:
        raise ValueError("finding nodules in whole scans needs a network; half-max segments given coordinates only")
    if not mv.lung_mask().any():   # else an empty result would look like a scan without nodules
        raise DataError(f"{mv.scan.record.image_path}: no lungs found (no large air-filled region inside the "
                        "body); finding nodules needs a chest CT")
    if prob_model is None:
        prob_model = predict_volume(mv, models.predictor, cfg.batch_size)
    labels, prob, found = candidates(mv, prob_model, models.detect, models.threshold)
    if models.fpr is not None:
        found = models.fpr.rescore(mv.scan, found)
    found.insert(0, "seriesuid", mv.scan.seriesuid)
    found = found.reindex(columns=NODULE_TABLE).sort_values("probability", ascending=False, kind="stable")
    table = found.head(models.detect.max_detections)
    keep = np.zeros(max(int(labels.max()), len(table) and int(table["nodule_id"].max())) + 1, dtype=labels.dtype)
    keep[table["nodule_id"].to_numpy(dtype=int)] = table["nodule_id"].to_numpy(dtype=int)
    labels = keep[labels]                          # masks of the detections written only
    return labels, prob, table, found


def run_scan(record: ScanRecord, models: Models, cfg: InferConfig, outputs: InferenceOutputs, given: bool,
             fmt: str, save_prob: bool, qa: bool) -> tuple[pd.DataFrame, pd.DataFrame | None, ScanSection]:
    """-> (the scan's rows of nodules.csv, whole-scan mode: every candidate, else None, its
    section of report.html). A DICOM series also gets a DICOM-SEG and SR."""
    scan = record.load(with_masks=False)   # --coords gives mode 1's nodules: no truth is read
    mv = to_model_volume(scan, models.cache_cfg)
    found = None
    if given:
        labels, prob, table = segment_given(mv, models, cfg)
    else:
        labels, prob, table, found = detect_all(mv, models, cfg)
    measured = measure_findings(scan.image, labels, scan.geometry, table["nodule_id"].astype(int))
    for column in MEASURED:
        table[column] = [measured[int(i)][column] for i in table["nodule_id"]]
    for column in MASK_SIZE:
        table[column] = [measured[int(i)].get(column, value) for i, value in zip(table["nodule_id"], table[column])]
    write_image(labels, scan.geometry, outputs.mask(scan.seriesuid, fmt), compress=True)
    if save_prob:
        write_image(prob, scan.geometry, outputs.probability(scan.seriesuid, fmt), compress=True)
    if qa and len(table):
        write_qa(scan, labels, table, outputs.qa(scan.seriesuid))
    if is_dicom_series(record.image_path):
        write_dicom_outputs(record.image_path, labels, table, outputs.root, outputs.dicom_stem(scan.seriesuid))
    section = scan_section(scan, labels, table, len(table) if given else REPORT_FINDINGS)
    return table, found, section


def write_qa(scan, labels: np.ndarray, table: pd.DataFrame, path: Path, max_panels: int = 12) -> None:
    from src.viz import (
        nodule_gallery,  # lazily: matplotlib is only needed for QA figures
    )

    items = []
    for row in table.head(max_panels).itertuples(index=False):
        if not (labels == row.nodule_id).any():
            continue
        z, y, x = np.rint(np.argwhere(labels == row.nodule_id).mean(0)).astype(int)
        half = int(max(24, 1.5 * (row.diameter_mm or 10) / scan.geometry.spacing_xyz[0]))
        box = (slice(max(y - half, 0), y + half), slice(max(x - half, 0), x + half))
        items.append(dict(image=scan.image[z][box], masks={"pred": (labels[z][box] == row.nodule_id, "red")},
                          title=f"#{row.nodule_id} d={row.diameter_mm:.1f}mm p={row.probability:.2f}"))
    if items:
        nodule_gallery(items, path, title=scan.seriesuid)


def failure_summary(failures: list[str], n_inputs: int, done: int, out_dir: Path) -> str:
    """The error line of a run with failures (several are listed on stderr first, so each
    is named and the last line is still the error line)."""
    if done:   # their rows are kept (InferenceOutputs.parts): the rerun predicts only the failed ones
        outputs = f"outputs of the other {done} scan(s) are in {out_dir} (a rerun predicts only the failed ones)"
    else:
        earlier = " (the tables already there are an earlier run's)" if InferenceOutputs(out_dir).run_json.exists() \
            else ""
        outputs = f"no outputs written{earlier}"
    if len(failures) == 1:
        return f"{failures[0]}; {outputs}"
    print("failed:", *failures, sep="\n  ", file=sys.stderr)
    return f"{len(failures)} of {n_inputs} inputs failed (listed above; first: {failures[0]}); {outputs}"


def run_id(models: Models, cfg: InferConfig, given: bool, fmt: str, save_prob: bool, qa: bool) -> str:
    """What a run's per-scan results depend on, besides each scan's own inputs."""
    fpr = [] if models.fpr is None else [file_hash(p) for p in models.fpr.checkpoints]
    return config_hash(dict(infer=config_hash(cfg), detect=config_hash(models.detect), threshold=models.threshold,
                            checkpoints=[file_hash(p) for p in models.checkpoints], fpr=fpr, given=given, fmt=fmt,
                            save_prob=save_prob, qa=qa))


def _kept(parts: Path, record: ScanRecord) -> tuple[Path, Path]:
    """A finished scan's rows and candidates, named by the scan and its given coordinates."""
    given = hashlib.sha1(record.nodules.to_csv(index=False).encode()).hexdigest()[:12]
    stem = f"{record.seriesuid}-{given}"
    return parts / f"{stem}.csv", parts / f"{stem}.candidates.csv"


def keep_scan(parts: Path, record: ScanRecord, table: pd.DataFrame, found: pd.DataFrame | None) -> None:
    rows, candidates_path = _kept(parts, record)
    if found is not None:   # first, so that a finished scan's rows never lack their candidates
        atomic_to_csv(found, candidates_path)
    atomic_to_csv(table, rows)


def resume_scan(parts: Path, record: ScanRecord, outputs: InferenceOutputs, given: bool,
                fmt: str) -> tuple[pd.DataFrame, pd.DataFrame | None, ScanSection] | None:
    """A scan finished by an interrupted run of the same id: its rows back, and its report
    section drawn again from the mask written then; None if it must be predicted."""
    rows, candidates_path = _kept(parts, record)
    if not rows.is_file():
        return None
    scan = record.load(with_masks=False)
    mask = outputs.mask(scan.seriesuid, fmt)
    if not mask.is_file():
        return None
    ids = {"seriesuid": str, "nodule_uid": str}
    table = pd.read_csv(rows, dtype=ids)
    found = None if given else pd.read_csv(candidates_path, dtype=ids)
    labels, _ = read_image(mask)
    return table, found, scan_section(scan, labels, table, len(table) if given else REPORT_FINDINGS)


def run_inference(records: list[ScanRecord], models: Models, cfg: InferConfig, out_dir: Path, given: bool,
                  fmt: str = ".nii.gz", save_prob: bool = False, qa: bool = False
                  ) -> tuple[pd.DataFrame, list[str], dict]:
    """-> (nodules table of all scans, failures as 'file: reason', timing). The tables and
    run.json are written only when at least one scan was done."""
    outputs = InferenceOutputs(out_dir)
    parts = outputs.parts(run_id(models, cfg, given, fmt, save_prob, qa))
    for other in out_dir.glob(outputs.parts("*").name):   # another run's: this one overwrites its masks
        if other != parts:
            shutil.rmtree(other, ignore_errors=True)
    tables, found, sections, failures, seconds, done = [], [], [], [], [], []
    resumed = 0
    for record in progress(records, desc="scans"):
        start = time.time()
        try:
            kept = resume_scan(parts, record, outputs, given, fmt)
            if kept is None:
                kept = run_scan(record, models, cfg, outputs, given, fmt, save_prob, qa)
                keep_scan(parts, record, kept[0], kept[1])
                seconds.append(time.time() - start)   # the scans predicted by this run
            else:
                resumed += 1
            table, candidates_of_scan, section = kept
            done.append(record.seriesuid)
            tables.append(table)
            found.append(candidates_of_scan)
            sections.append(section)
        except (DataError, OSError) as err:   # anything else is a bug: its traceback
            failures.append(str(err) if str(record.image_path) in str(err) else f"{record.image_path}: {err}")
    if resumed:
        print(f"resumed: {resumed} of {len(records)} scan(s) were done by an interrupted run ({parts.name})",
              file=sys.stderr)
    timing = {"seconds_per_scan": float(np.mean(seconds)) if seconds else None}
    if not tables:
        return pd.DataFrame(columns=NODULE_TABLE), failures, timing
    nodules = pd.concat(tables, ignore_index=True)
    atomic_write_text(outputs.run_json, json.dumps(dict(
        code_version=code_version(), config_hash=config_hash(cfg), checkpoints=[str(p) for p in models.checkpoints],
        threshold=models.threshold, threshold_source=models.threshold_source, mode="coords" if given else "scan",
        prompted=bool(given) and models.prompted,   # the networks were told each given nodule's sphere
        max_detections=None if given else models.detect.max_detections,
        fpr=None if given or models.fpr is None else dict(
            checkpoints=[str(p) for p in models.fpr.checkpoints], classifier_weight=models.fpr.weight,
            weight_source=models.fpr.weight_source),
        seriesuids=done, failures=failures), indent=1))
    atomic_to_csv(nodules, outputs.nodules, float_format="%.4f")
    if not given:
        atomic_to_csv(nodules[["seriesuid", "coordX", "coordY", "coordZ", "probability"]],
                      outputs.submission, float_format="%.4f")
        every = pd.concat(found, ignore_index=True)
        atomic_to_csv(every.drop(columns=[c for c in NODULE_TABLE if c.startswith("given_")] + MEASURED + ["nodule_uid"]),
                      outputs.candidates, float_format="%.4f")
    write_report(sections, outputs.report, failures=failures, run_info=dict(
        mode="segment given nodules" if given else "find nodules in whole scans",
        models=", ".join(str(p) for p in models.checkpoints) or "half-max (no network)",
        threshold=f"{models.threshold:g} ({models.threshold_source})",
        prompt=("each given nodule's centre and diameter, as the network's prompt channel" if models.prompted
                else "none (the network is not prompted)") if given and models.predictor is not None else None,
        fpr=None if given or models.fpr is None else f"{len(models.fpr.checkpoints)} classifier(s)",
        code_version=code_version()))
    if not failures:   # every scan done: nothing left to resume (a failed one keeps the others for the rerun)
        for finished in out_dir.glob(outputs.parts("*").name):
            shutil.rmtree(finished, ignore_errors=True)
    return nodules, failures, timing
