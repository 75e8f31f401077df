"""Stage 3: soft pseudo-labels from the fold-teacher ensemble.

For every training patch (never a hold-out one) the ensemble of fold teachers (with flip
TTA) predicts per-pixel probabilities, at temperature ``pseudo.temperature``. On coarse
patches the coarse prior is enforced: zero beyond ``prior_margin_mm`` outside every coarse
sphere. Fine patches keep the unconstrained ensemble output (targets for logit KD).

``outputs/<experiment>/pseudo.h5``:
    attrs        cache_hash, folds_hash, teachers, temperature, prior_margin_mm, tta
    rows         (M,) int64   cache row of each soft label, sorted
    soft         (M, P, P) float16, one chunk per patch
    constrained  (M,) bool    the coarse prior was applied (coarse patch)

Where a coarse scan's fine mask exists but was withheld (built-in dataset), the quality
of the pseudo-labels against it is measured, per patch and per nodule in 3D.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from torch import nn
from tqdm import tqdm

from src.config import PseudoConfig, to_dict
from src.data.dataset import select_patches
from src.data.folds import fold_ids, split_uids
from src.data.patches import DIST_UNITS_PER_MM
from src.engine.checkpoint import model_from_checkpoint
from src.engine.context import StageContext
from src.engine.evaluate import predict_roi, roi_centre, roi_prior, segment_at
from src.engine.metrics import dice, size_bin
from src.engine.runtime import Runtime
from src.infer.predictor import Predictor
from src.utils import atomic_path

SIGMOID_CLIP = 60.0


def teacher_checkpoints(ctx: StageContext) -> list[Path]:
    paths = [ctx.teacher_dir(f) / "checkpoint_best.pt" for f in fold_ids(ctx.folds)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"teacher checkpoints missing: {missing}; run train.py --fold K first")
    return paths


def load_ensemble(ctx: StageContext) -> list[nn.Module]:
    models = [model_from_checkpoint(p) for p in teacher_checkpoints(ctx)]
    for path, model in zip(teacher_checkpoints(ctx), models):
        if model.checkpoint_meta.get("cache_hash") != ctx.cache_hash:
            raise ValueError(f"{path}: trained on another cache than {ctx.cfg.paths.cache}")
    return models


def _sigmoid(logits: np.ndarray, temperature: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits / temperature, -SIGMOID_CLIP, SIGMOID_CLIP)))


def apply_prior(prob: np.ndarray, coarse_dist_mm: np.ndarray, margin_mm: float) -> np.ndarray:
    """Zero the probability beyond ``margin_mm`` outside every coarse sphere."""
    return np.where(coarse_dist_mm <= margin_mm, prob, 0.0).astype(prob.dtype)


def write_pseudo_labels(ctx: StageContext, rt: Runtime) -> tuple[Path, pd.DataFrame]:
    cfg: PseudoConfig = ctx.cfg.pseudo
    splits = split_uids(ctx.folds, None)
    selection = select_patches(ctx.cache, ctx.folds, splits["train"])
    order = np.argsort(selection.indices)
    rows, constrained = selection.indices[order], ~selection.fine_ok[order]
    holdout_rows = ctx.cache.patches["seriesuid"].isin(splits["holdout"]).to_numpy()
    assert not holdout_rows[rows].any(), "hold-out patches reached pseudo-labelling"

    predictor = Predictor(load_ensemble(ctx), rt, ctx.window, tta=cfg.tta, batch_size=cfg.batch_size)
    p = ctx.patch_size
    out = ctx.pseudo_path
    attrs = dict(cache_hash=ctx.cache_hash, folds_hash=ctx.folds_hash, config=json.dumps(to_dict(cfg)),
                 teachers=json.dumps([str(t) for t in teacher_checkpoints(ctx)]))
    f_cache = ctx.cache.file
    with atomic_path(out, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(attrs)
        f.create_dataset("rows", data=rows.astype(np.int64))
        f.create_dataset("constrained", data=constrained)
        soft = f.create_dataset("soft", (len(rows), p, p), np.float16, chunks=(1, p, p))
        for i in tqdm(range(0, len(rows), cfg.batch_size), desc="pseudo-labels"):
            idx = rows[i:i + cfg.batch_size]
            prob = _sigmoid(predictor.logits(f_cache["patches/image"][idx]), cfg.temperature)
            dist = f_cache["patches/coarse_dist"][idx].astype(np.float32) / DIST_UNITS_PER_MM
            keep = constrained[i:i + cfg.batch_size]
            prob[keep] = apply_prior(prob[keep], dist[keep], cfg.prior_margin_mm)
            soft[i:i + len(idx)] = prob.astype(np.float16)
    return out, pseudo_quality(ctx, predictor, out)


def pseudo_quality(ctx: StageContext, predictor: Predictor, pseudo_path: Path) -> pd.DataFrame:
    """Pseudo-labels of coarse scans vs their withheld fine masks: per nodule in 3D (ROI,
    prior applied, component at the centre) and per patch. Empty if no truth is known."""
    coarse_scans = set(ctx.folds.loc[(ctx.folds["label_kind"] == "coarse") & (ctx.folds["fold"] != "holdout"),
                                     "seriesuid"])
    nodules = ctx.cache.nodules
    nodules = nodules[nodules["seriesuid"].isin(coarse_scans) & nodules["has_fine"].astype(bool)]
    spacing = np.asarray(ctx.cache.attrs["spacing_zyx"], dtype=float)
    cfg = ctx.cfg.pseudo
    with h5py.File(pseudo_path, "r") as f:
        rows, soft = f["rows"][()], f["soft"]
        meta = ctx.cache.patches
        records = []
        for nod in tqdm(nodules.itertuples(index=False), total=len(nodules), desc="pseudo quality", leave=False):
            roi = ctx.cache.roi(nod.roi)
            prob = predict_roi(predictor, roi, ctx.k)
            prob = np.where(roi_prior(roi["coarse"], spacing, cfg.prior_margin_mm), prob, 0.0)
            centre = roi_centre(nod)
            pred = segment_at(prob, centre, nod.diameter_mm / 2, spacing, ctx.cfg.infer.threshold)
            # the same nodule's 2.5D patches, as stored in pseudo.h5 (both row lists sorted)
            mine = np.flatnonzero((meta["nodule_uid"] == nod.nodule_uid).to_numpy())
            truth = ctx.cache.file["patches/fine"][mine] > 0
            patch_dice = [dice(soft[j] >= 0.5, t) for j, t in zip(np.searchsorted(rows, mine), truth)]
            records.append(dict(nodule_uid=nod.nodule_uid, seriesuid=nod.seriesuid, diameter_mm=nod.diameter_mm,
                                size_bin=size_bin(nod.diameter_mm), dice_3d=dice(pred, roi["fine"] > 0),
                                patch_dice=float(np.mean(patch_dice)) if patch_dice else np.nan,
                                sphere_dice=dice(roi["coarse"] > 0, roi["fine"] > 0)))
    return pd.DataFrame(records)
