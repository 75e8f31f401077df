"""Mode 2 - whole-scan segmentation: the 2.5D model becomes a nodule detector.

Inside the lungs' bounding box (LUNA16 seg-lungs when present, else a lung mask from HU,
dilated so that nodules on the pleura stay in), every axial slice is predicted as a 2.5D
stack, streamed in batches of slices; the network is fully convolutional over the field.
Candidates are the map's local maxima (low threshold: recall first), large enough and
mostly inside the lungs, merged with classical blobs of the image (``src.data.blobs``);
each becomes a row, with the map's component around it as its mask on the scan's own grid;
the false-positive-reduction classifier (``src.predict.fpr``) rescores them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import cc3d
import numpy as np
import pandas as pd
from scipy import ndimage

from src.config import CacheConfig, DetectConfig
from src.data.blobs import find_blobs
from src.data.geometry import sphere_diameter_mm
from src.data.preprocess import resample
from src.data.scan import ScanRecord
from src.data.tables import XYZ
from src.predict.predictor import Predictor
from src.predict.segment import ModelVolume, to_model_volume
from src.utils import atomic_path, progress

CANDIDATE_COLUMNS = ["coordX", "coordY", "coordZ", "volume_mm3", "diameter_mm", "mean_hu", "seg_probability", "source"]
LUNG_DILATION_MM = 6.0
CORE_REACH_MM = 20.0      # a candidate's core is measured within this distance of its peak


def lung_region(mv: ModelVolume) -> np.ndarray:
    """The lungs grown by ~6 mm (a separable box maximum: ~100x faster than a 3D binary
    dilation with a ball, and the exact shape of the margin does not matter here)."""
    lung = mv.lung_mask()
    radius = np.maximum(np.rint(LUNG_DILATION_MM / mv.geometry.spacing_zyx).astype(int), 1)
    return ndimage.maximum_filter(lung, size=tuple(2 * r + 1 for r in radius)) if lung.any() else lung


def lung_box(region: np.ndarray) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """The slices (z) that hold ``region``, and the one in-plane box around all of them:
    its corner (y0, x0) and size (h, w). ``region`` must hold something."""
    zs = np.flatnonzero(region.any(axis=(1, 2)))
    ys = np.flatnonzero(region.any(axis=(0, 2)))
    xs = np.flatnonzero(region.any(axis=(0, 1)))
    y0, x0 = int(ys[0]), int(xs[0])
    return zs, (y0, x0), (int(ys[-1]) - y0 + 1, int(xs[-1]) - x0 + 1)


def lung_box_stacks(mv: ModelVolume, zs: np.ndarray, corner: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """(len(zs), k, h, w) HU: the 2.5D stacks of the lung box at slices ``zs`` (what
    whole-scan search feeds the networks)."""
    h = mv.cfg.k_slices // 2
    return np.stack([mv.stacks(np.arange(z - h, z + h + 1), *corner, size) for z in zs])


def predict_volume(mv: ModelVolume, predictor: Predictor, slices_per_batch: int,
                   show_progress: bool = True) -> np.ndarray:
    """float32 probability volume in model space; zero outside the (dilated) lungs."""
    region = lung_region(mv)
    prob = np.zeros(mv.image.shape, dtype=np.float32)
    if not region.any():
        return prob
    zs, (y0, x0), size = lung_box(region)
    for i in progress(range(0, len(zs), slices_per_batch), desc="slices", enabled=show_progress):
        batch = zs[i:i + slices_per_batch]
        prob[batch, y0:y0 + size[0], x0:x0 + size[1]] = predictor.prob(lung_box_stacks(mv, batch, (y0, x0), size))
    prob *= region
    return prob


def write_maps(records: list[ScanRecord], predictor: Predictor, cache_cfg: CacheConfig, batch_size: int,
               path_of: Callable[[str], Path], desc: str) -> None:
    """Whole-scan probability maps (model space, float16), one file per scan; scans whose
    file exists are skipped, so an interrupted pass resumes."""
    for record in progress([r for r in records if not path_of(r.seriesuid).is_file()], desc=desc):
        mv = to_model_volume(record.load(), cache_cfg)
        prob = predict_volume(mv, predictor, batch_size, show_progress=False)
        with atomic_path(path_of(record.seriesuid), suffix=".npz") as tmp:
            np.savez_compressed(tmp, prob=prob.astype(np.float16))


def read_map(path: Path) -> np.ndarray:
    with np.load(path) as f:
        return f["prob"].astype(np.float32)


def peaks(prob: np.ndarray, spacing_zyx, separation_mm: float, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of a probability volume at or above ``threshold``, at least about
    ``separation_mm`` apart: (voxel (z, y, x) per peak, its probability), highest first.
    A plateau (saturated probabilities) is one peak at its centroid."""
    above = np.argwhere(prob >= threshold)
    if len(above) == 0:
        return np.zeros((0, 3), dtype=int), np.zeros(0)
    size = tuple(int(v) // 2 * 2 + 1 for v in np.maximum(np.rint(separation_mm / np.asarray(spacing_zyx)), 1))
    lo = np.maximum(above.min(0) - np.array(size) // 2, 0)   # the map is zero far from the lungs: work on its box
    box = tuple(slice(a, b) for a, b in zip(lo, above.max(0) + np.array(size) // 2 + 1))
    sub = prob[box]
    top = (sub >= ndimage.maximum_filter(sub, size=size, mode="constant")) & (sub >= threshold)
    regions = cc3d.connected_components(top, connectivity=26)
    stats = cc3d.statistics(regions)
    where = np.rint(stats["centroids"][1:]).astype(int)
    for i in np.flatnonzero(regions[tuple(where.T)] != np.arange(1, len(where) + 1)):
        # a non-convex plateau's centroid may lie off it: take one of its own voxels
        bb = stats["bounding_boxes"][i + 1]
        where[i] = np.argwhere(regions[bb] == i + 1)[0] + [s.start for s in bb]
    value = sub[tuple(where.T)]
    order = np.argsort(-value, kind="stable")
    return where[order] + lo, value[order]


def candidates(mv: ModelVolume, prob_model: np.ndarray, cfg: DetectConfig,
               seg_threshold: float) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Native-grid (label volume, probability volume, one row per candidate).

    Two sources, merged (``source``: map, blob or both):

    * the map's local maxima at or above ``cfg.candidate_threshold`` (low: recall first, the
      FPR stage brings precision), ``peak_separation_mm`` apart, so that a nodule touching a
      vessel keeps a peak of its own. Each peak's *core* (the voxels at or above half its
      probability, connected to it) must hold ``min_component_mm3`` and have
      ``min_lung_fraction`` of itself in the lungs;
    * the ``blob_candidates`` strongest classical blobs in the closed lungs
      (``src.data.blobs``): nodules the map gives no response to (faint ground glass) still
      reach the classifier. A blob within ``peak_separation_mm`` of a map peak is that peak.

    Every candidate a blob found is kept; the map's other peaks fill the rest of
    ``max_candidates`` by their probability (``merge_sources``). A candidate's location is its peak (inside the nodule it found, even when
    the map is a ring around a large one); its mask, the component of the map at the
    segmentation threshold around it (a blob-only candidate usually has none);
    ``seg_probability`` is the map's probability there."""
    table = map_candidates(mv, prob_model, cfg)
    blobs = find_blobs(mv.image, mv.geometry, mv.lung_mask(), cfg.blob_candidates, cfg.blob_min_response)
    table = merge_sources(table, blob_rows(mv, prob_model, blobs), cfg.max_candidates, cfg.peak_separation_mm)
    table["probability"] = table["seg_probability"]   # the final score until the FPR stage rescores it
    table["nodule_id"] = np.arange(1, len(table) + 1)
    native = mv.native
    prob = resample(prob_model, mv.geometry, native, "linear", default=0.0)
    return candidate_masks(prob, native, table, seg_threshold), prob, table


def merge_sources(peaks_table: pd.DataFrame, blobs: pd.DataFrame, max_candidates: int,
                  separation_mm: float) -> pd.DataFrame:
    """Map peaks (strongest first) and blobs (strongest first) as one table of at most
    ``max_candidates`` rows. A blob within ``separation_mm`` of a peak is that peak
    (``source`` both, the blob's response kept); every blob-found row is kept, and the peaks
    found by the map alone fill the rest by probability. (A blob matched to a peak that is
    then cut would be lost: the match lifts the peak instead.)"""
    table = peaks_table.assign(blob_response=np.nan)
    if len(blobs) and len(table):
        d = np.linalg.norm(blobs[XYZ].to_numpy(float)[:, None] - table[XYZ].to_numpy(float)[None], axis=-1)
        near = d.argmin(axis=1)
        same = d[np.arange(len(blobs)), near] <= separation_mm
        for i, j in zip(np.flatnonzero(same), near[same]):   # strongest blob first: it names the peak
            if np.isnan(table.at[j, "blob_response"]):
                table.at[j, "blob_response"] = blobs["blob_response"].iloc[i]
                table.at[j, "source"] = "both"
        blobs = blobs[~same]
    by_blob = pd.concat([table[table["source"] == "both"], blobs], ignore_index=True).head(max_candidates)
    map_only = table[table["source"] == "map"].head(max_candidates - len(by_blob))
    return pd.concat([map_only, by_blob], ignore_index=True).sort_values(
        "seg_probability", ascending=False, kind="stable", ignore_index=True)


def map_candidates(mv: ModelVolume, prob_model: np.ndarray, cfg: DetectConfig) -> pd.DataFrame:
    """Up to ``max_candidates`` peaks of the map whose core passes the size and lung tests."""
    spacing = mv.geometry.spacing_zyx
    lung = mv.lung_mask()
    voxel_mm3 = float(np.prod(spacing))
    reach = np.ceil(CORE_REACH_MM / spacing).astype(int)
    rows = []
    for at, peak in zip(*peaks(prob_model, spacing, cfg.peak_separation_mm, cfg.candidate_threshold)):
        if len(rows) == cfg.max_candidates:
            break
        lo = np.maximum(at - reach, 0)
        box = tuple(slice(a, b) for a, b in zip(lo, np.minimum(at + reach + 1, prob_model.shape)))
        core = cc3d.connected_components(prob_model[box] >= 0.5 * peak, connectivity=26)
        core = core == core[tuple(at - lo)]
        volume = float(core.sum()) * voxel_mm3
        if volume < cfg.min_component_mm3 or lung[box][core].mean() < cfg.min_lung_fraction:
            continue
        x, y, z = mv.geometry.voxel_to_world(at)
        rows.append(dict(coordX=x, coordY=y, coordZ=z, volume_mm3=volume,
                         diameter_mm=sphere_diameter_mm(volume),
                         mean_hu=float(mv.image[box][core].mean()), seg_probability=float(peak), source="map"))
    return pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)


def blob_rows(mv: ModelVolume, prob_model: np.ndarray, blobs: pd.DataFrame) -> pd.DataFrame:
    """Blobs as candidate rows: the sphere their scale implies, the map's probability at
    their centre and the mean HU of the 3 x 3 x 3 voxels there."""
    if len(blobs) == 0:
        return pd.DataFrame(columns=[*CANDIDATE_COLUMNS, "blob_response"])
    at = np.rint(mv.geometry.world_to_voxel(blobs[XYZ].to_numpy(float))).astype(int)
    at = np.clip(at, 0, np.asarray(prob_model.shape) - 1).reshape(-1, 3)
    mean_hu = [float(mv.image[tuple(slice(max(c - 1, 0), c + 2) for c in v)].mean()) for v in at]
    return blobs.assign(volume_mm3=np.pi / 6 * blobs["diameter_mm"] ** 3, mean_hu=mean_hu,
                        seg_probability=prob_model[tuple(at.T)].astype(float), source="blob"
                        ).reindex(columns=[*CANDIDATE_COLUMNS, "blob_response"])


def candidate_masks(prob: np.ndarray, native, table: pd.DataFrame, seg_threshold: float) -> np.ndarray:
    """Label k = the component of ``prob >= seg_threshold`` at candidate k (a higher-ranked
    candidate keeps a component two share; a faint candidate has no mask). Components are
    labelled in the box of the voxels above threshold only: on a 512 x 512 x 300 grid a full
    label volume is the whole-scan pass's peak memory."""
    labels = np.zeros(prob.shape, dtype=np.uint16)
    above = prob >= seg_threshold
    if not above.any() or len(table) == 0:
        return labels
    box = tuple(slice(int(i[0]), int(i[-1]) + 1)
                for i in (np.flatnonzero(above.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1))))
    components = cc3d.connected_components(above[box], connectivity=26)
    del above
    at = np.rint(native.world_to_voxel(table[XYZ].to_numpy(float))).astype(int)
    at = np.clip(at, 0, np.asarray(native.shape_zyx) - 1).reshape(-1, 3)
    lo = np.array([b.start for b in box])
    inside = np.all((at >= lo) & (at < [b.stop for b in box]), axis=1)
    remap = np.zeros(int(components.max()) + 1, dtype=np.uint16)
    for nodule_id, c in zip(table["nodule_id"].to_numpy()[inside][::-1], components[tuple((at[inside] - lo).T)][::-1]):
        if c:
            remap[c] = nodule_id     # walked from the lowest rank up: the highest rank writes last
    labels[box] = remap[components]
    return labels
