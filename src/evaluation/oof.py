"""Out-of-fold (OOF) predictions, and the postprocessing chosen on them (as nnU-Net does).

Each fold teacher's best checkpoint segments every scored nodule of its own validation
patients (``NoduleCase``); ``teacher/fold_K/val_predictions.h5`` keeps, per nodule, the
probability over the scored region and the truth there, so that any threshold can be
re-applied later through the same ``segment_at`` rule. ``cv.py`` picks the threshold
with the best pooled OOF Dice and writes it to ``postprocessing.json``; the CV leaderboard
is then scored at that threshold, as are the hold-out leaderboard and ``infer.py``. The
choice sees training patients only, so the hold-out stays untouched.

``val_predictions.h5``: attrs fold, checkpoint, cache_hash; one group per nodule, ``n/<i>``,
with ``prob`` (float32, gzip), ``truth`` (uint8) and attrs nodule_uid, seriesuid,
diameter_mm, size_bin, texture, attachment, reader_dice, centre_zyx (voxel in the region),
radius_mm, spacing_zyx. A file written before a grouping existed reads as "unknown" in it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from src.data.groups import GROUPS, UNKNOWN
from src.errors import DataError
from src.evaluation.cases import NoduleCase
from src.evaluation.metrics import dice, segmentation_metrics
from src.predict.segment import Segmented, segment_at
from src.utils import atomic_path, atomic_to_csv

THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.05, 0.951, 0.05), 2))   # prompted nets can be confident
# = cases.describe()
DESCRIPTION = ("nodule_uid", "seriesuid", "diameter_mm", *GROUPS, "reader_dice", "coords_from_mask")


def write_oof(cases: list[NoduleCase], segs: list[Segmented], path: Path, attrs: dict) -> Path:
    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(attrs)
        for i, (case, seg) in enumerate(zip(cases, segs)):
            g = f.create_group(f"n/{i}")
            g.create_dataset("prob", data=case.to_region(seg.prob, seg.box), compression="gzip", compression_opts=1)
            g.create_dataset("truth", data=case.truth.astype(np.uint8), compression="gzip", compression_opts=1)
            origin = np.array([b.start - r.start for b, r in zip(seg.box, case.region)])
            g.attrs.update({k: v for k, v in case.describe().items()},
                           centre_zyx=seg.centre_zyx + origin, radius_mm=seg.radius_mm,
                           spacing_zyx=case.spacing_zyx)
    return path


@dataclass
class OOFNodule:
    info: dict
    prob: np.ndarray
    truth: np.ndarray
    centre_zyx: np.ndarray
    radius_mm: float
    spacing_zyx: np.ndarray

    def mask(self, threshold: float, fallback: bool = True) -> tuple[np.ndarray, bool]:
        """(mask, whether the given sphere stood in): ``segment_at``'s rule."""
        return segment_at(self.prob, self.centre_zyx, self.radius_mm, self.spacing_zyx, threshold, fallback)


def check_oof_folds(oof: list[tuple[int, OOFNodule]], folds: pd.DataFrame, folds_path: str | Path) -> None:
    """Every OOF nodule's scan is still in the fold that validated it (folds.csv edited after
    training would otherwise mix in-fold and out-of-fold predictions silently)."""
    fold_of = dict(zip(folds["seriesuid"], folds["fold"]))
    for fold, nodule in oof:
        uid = nodule.info["seriesuid"]
        if fold_of.get(uid) != str(fold):
            raise DataError(f"{folds_path}: scan {uid} was validated by teacher fold {fold} but is now in fold "
                            f"{fold_of.get(uid, '(none)')}; retrain the folds, or restore folds.csv")


def read_oof(paths: list[Path], root: Path | None = None) -> list[tuple[int, OOFNodule]]:
    """(fold, nodule) for every nodule of the given fold files (``root``: where they were
    looked for, named when there are none)."""
    if not paths:
        raise DataError(f"{root or '.'}: no teacher/fold_*/val_predictions.h5; train the fold teachers first")
    out = []
    for path in paths:
        try:
            with h5py.File(path, "r") as f:
                fold = int(f.attrs["fold"])
                for key in sorted(f.get("n", {}), key=int):
                    g = f["n"][key]
                    info = {k: _attr(g, k) for k in DESCRIPTION}
                    out.append((fold, OOFNodule(info, g["prob"][()], g["truth"][()] > 0, g.attrs["centre_zyx"],
                                                float(g.attrs["radius_mm"]), g.attrs["spacing_zyx"])))
        except (OSError, KeyError) as err:
            raise DataError(f"{path}: unreadable OOF predictions ({str(err).splitlines()[0]}); retrain that fold") from None
    return out


def _attr(group: h5py.Group, key: str):
    if key in GROUPS and key not in group.attrs:
        return UNKNOWN
    if key == "coords_from_mask" and key not in group.attrs:   # files written before the flag: given coordinates
        return False
    value = group.attrs[key]
    return value.item() if hasattr(value, "item") else value


def choose_threshold(oof: list[tuple[int, OOFNodule]]) -> dict:
    """Pooled OOF Dice at each candidate threshold; the best one (ties: closest to 0.5). On
    the networks' own masks, without the sphere fallback: a threshold that finds nothing
    must not score as well as the sphere."""
    if not oof:
        raise DataError("no OOF nodules with fine masks to choose a threshold on")
    mean = {t: float(np.mean([dice(n.mask(t, fallback=False)[0], n.truth) for _, n in oof])) for t in THRESHOLDS}
    best = max(mean, key=lambda t: (round(mean[t], 6), -abs(t - 0.5)))
    return {"threshold": best, "oof_dice_at_threshold": mean, "nodules": len(oof)}


def score_oof(oof: list[tuple[int, OOFNodule]], threshold: float) -> pd.DataFrame:
    """One row per OOF nodule at ``threshold``, with its fold, scored as every nodule is."""
    rows = []
    for fold, n in oof:
        mask, fallback = n.mask(threshold)
        rows.append(dict(fold=fold, **n.info, **segmentation_metrics(mask, n.truth, n.spacing_zyx),
                         sphere_fallback=fallback))
    return pd.DataFrame(rows)


def cv_board(ctx) -> tuple[pd.DataFrame, str]:
    """Cross-validation: the threshold chosen on the pooled OOF Dice (written to
    postprocessing.json) and every OOF nodule scored at it (oof_nodules.csv) -> (per-nodule
    rows per fold teacher and pooled, the board's title)."""
    layout = ctx.layout
    oof = read_oof(layout.all_oof_predictions(), layout.root)
    check_oof_folds(oof, ctx.folds, ctx.cfg.paths.folds)
    choice = choose_threshold(oof)
    dice_at = choice["oof_dice_at_threshold"]
    print(f"probability threshold chosen on OOF: {choice['threshold']} (pooled OOF Dice "
          f"{dice_at[choice['threshold']]:.4f}; {dice_at[0.5]:.4f} at 0.5) -> {layout.write_postprocessing(choice)}")
    scored = score_oof(oof, choice["threshold"])
    atomic_to_csv(scored, layout.per_nodule("oof"), float_format="%.5g")
    per_nodule = pd.concat([scored.assign(model=[f"teacher fold {f}" for f in scored["fold"]]),
                            scored.assign(model=f"OOF, {scored['fold'].nunique()} folds pooled")], ignore_index=True)
    title = (f"{ctx.cfg.paths.experiment}: cross-validation, out-of-fold, at threshold {choice['threshold']} "
             "(chosen on these OOF predictions)")
    return per_nodule, title
