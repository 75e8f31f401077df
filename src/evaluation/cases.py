"""Scored nodules: each annotated nodule with a fine mask, segmented from its coordinates
through :func:`src.predict.segment.segment_nodule` and compared with its mask on the scan's
own grid. Validation, OOF, the hold-out leaderboard, pseudo-label quality and
``evaluate.py`` all score this way.

A :class:`NoduleCase` keeps only what scoring one nodule needs: the model-space crop its
window reads, and its truth mask over a native region that holds both the window and the
whole mask. The truth decides *where scoring looks*, never where or what is predicted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from src.config import CacheConfig, InferConfig
from src.data.groups import nodule_groups
from src.data.scan import Nodule, Scan, ScanRecord
from src.evaluation.metrics import inter_reader_dice, segmentation_metrics
from src.predict.segment import (ModelVolume, Segmented, model_box_for, model_volume_crop, model_volume_grid,
                                 native_box, nodule_window, segment_nodule)
from src.utils import progress


@dataclass
class NoduleCase:
    nodule: Nodule
    seriesuid: str
    mv: ModelVolume                      # the model-space crop the nodule's window reads
    region: tuple[slice, slice, slice]   # native voxels scored: the window's and the whole mask's
    truth: np.ndarray                    # bool, the nodule's fine mask over `region`
    reader_dice: float                   # inter-reader Dice of this nodule (the ceiling), NaN if unknown

    @property
    def spacing_zyx(self) -> np.ndarray:
        return self.mv.native.spacing_zyx

    def describe(self) -> dict:
        return describe(self.nodule, self.seriesuid, self.reader_dice)

    def to_region(self, values_in_box: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
        """A prediction over the window's native box, placed into the scored region."""
        out = np.zeros(self.truth.shape, dtype=values_in_box.dtype)
        out[tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, self.region))] = values_in_box
        return out

    def segment(self, segmenter, cfg: InferConfig, threshold: float) -> Segmented:
        return segment_nodule(self.mv, self.nodule.center_xyz, self.nodule.diameter_mm, segmenter, cfg, threshold)

    def score(self, seg: Segmented, distances: bool = True) -> dict:
        """Metrics of one segmentation, with the nodule's description."""
        pred = self.to_region(seg.mask, seg.box)
        return {**self.describe(), **segmentation_metrics(pred, self.truth, self.spacing_zyx, distances),
                "sphere_fallback": seg.fallback}


def describe(nodule: Nodule, seriesuid: str, reader_dice: float) -> dict:
    """The columns every per-nodule table starts with: its groups (size bin, texture,
    attachment: ``src.data.groups.GROUPS``), its inter-reader Dice, and whether its centre
    and diameter were read off its own mask (``paths.mask_only_nodules``: the prompt, and
    the sphere a segmenter works in, then come from the truth)."""
    return dict(nodule_uid=nodule.nodule_uid, seriesuid=seriesuid, diameter_mm=nodule.diameter_mm,
                **nodule_groups(nodule), reader_dice=reader_dice, coords_from_mask=nodule.from_mask)


def score_full(scan: Scan, nodule: Nodule, pred: np.ndarray) -> dict:
    """Metrics of a prediction given on the whole scan grid (``evaluate.py``), over both
    masks' bounding box + 1 voxel: the same numbers as :meth:`NoduleCase.score`."""
    truth = scan.fine_mask == nodule.fine_label
    boxes = [_bbox(m) for m in (truth, pred) if m.any()]
    lo, hi = np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)
    region = tuple(slice(int(a), int(b)) for a, b in zip(np.maximum(lo - 1, 0),
                                                         np.minimum(hi + 1, scan.geometry.shape_zyx)))
    return {**describe(nodule, scan.seriesuid, reader_agreement(scan, nodule)),
            **segmentation_metrics(pred[region], truth[region], scan.geometry.spacing_zyx)}


def _bbox(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argwhere(mask)
    return idx.min(0), idx.max(0) + 1


def reader_agreement(scan: Scan, nodule: Nodule) -> float:
    """Inter-reader Dice in the scan's own grid, within 0.75 diameter + 3 mm of the centre."""
    if scan.reader_bits is None:
        return float("nan")
    geo = scan.geometry
    c = geo.world_to_voxel(nodule.center_xyz)
    r = (0.75 * nodule.diameter_mm + 3.0) / geo.spacing_zyx
    lo = np.maximum(np.floor(c - r).astype(int), 0)
    hi = np.minimum(np.ceil(c + r).astype(int) + 1, geo.shape_zyx)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)
    bits = np.where((((grid - c) / r) ** 2).sum(-1) <= 1, scan.reader_bits[box], 0)
    n = int(nodule.n_readers) if np.isfinite(nodule.n_readers) else int(bits.max()).bit_length()
    return inter_reader_dice(bits, n)


def cases_from_scan(scan: Scan, cache_cfg: CacheConfig, infer_cfg: InferConfig,
                    mv: ModelVolume | None = None) -> list[NoduleCase]:
    """One case per nodule of ``scan`` that has a fine mask. Without ``mv`` (the whole
    scan in model space), only each nodule's crop is resampled."""
    nodules = [n for n in scan.nodules if n.fine_label] if scan.fine_mask is not None else []
    if not nodules:
        return []
    grid = mv or model_volume_grid(scan, cache_cfg)
    cases = []
    for nod in nodules:
        window = nodule_window(grid, nod.center_xyz, nod.diameter_mm, infer_cfg.roi_margin_mm)
        box = native_box(window, grid.geometry, grid.native)
        truth_full = scan.fine_mask == nod.fine_label
        t_lo, t_hi = _bbox(truth_full)
        lo = np.maximum(np.minimum([s.start for s in box], t_lo) - 1, 0)
        hi = np.minimum(np.maximum([s.stop for s in box], t_hi) + 1, scan.geometry.shape_zyx)
        region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        model_box = model_box_for(window, cache_cfg.k_slices)
        crop = mv.around(*model_box) if mv is not None else model_volume_crop(scan, cache_cfg, *model_box)
        cases.append(NoduleCase(nod, scan.seriesuid, crop, region, truth_full[region], reader_agreement(scan, nod)))
    return cases


def load_cases(records: list[ScanRecord], cache_cfg: CacheConfig, infer_cfg: InferConfig,
               desc: str = "read scans") -> list[NoduleCase]:
    """The scored nodules of ``records``, read once (a few MB each in memory)."""
    cases: list[NoduleCase] = []
    for record in progress(records, desc=desc):
        cases += cases_from_scan(record.load(), cache_cfg, infer_cfg)
    return cases
