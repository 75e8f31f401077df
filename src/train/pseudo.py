"""Stage 3: soft pseudo-labels from the fold-teacher ensemble.

For every training patch (never a hold-out one) the ensemble of fold teachers (with flip
TTA; prompted teachers told the patch's coordinates) predicts per-pixel probabilities, at
temperature ``pseudo.temperature``. On coarse patches the coarse prior is enforced: zero
beyond ``prior_margin_mm`` outside every coarse sphere. Fine patches keep the unconstrained
ensemble output (targets for logit KD).

``outputs/<experiment>/pseudo.h5``:
    attrs        cache_hash, folds_hash, config (the pseudo.* settings, JSON), code_version,
                 teachers (their checkpoints, JSON), teacher_files (those files' hashes: the labels' identity)
    rows         (M,) int64   cache row of each soft label, sorted
    soft         (M, P, P) float16, one chunk per patch
    constrained  (M,) bool    the coarse prior was applied (coarse patch)

The pass resumes: each batch of labels is kept beside the file (``.pseudo.h5.parts-<id>/``,
the id naming the labels' inputs) until the last one is done and all are merged.

Where a coarse scan's fine mask exists but was withheld (built-in dataset), the quality
of the pseudo-labels against it is measured: per nodule in 3D through the one scoring path
(the ensemble segments each nodule from its coordinates), and per 2.5D patch as stored.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from src.config import PseudoConfig, code_version, config_hash, to_dict
from src.data.classical import BINARY_LEVEL
from src.data.context import StageContext
from src.data.folds import HOLDOUT, development_uids, file_hash, refuse_holdout, split_uids
from src.data.manifest import read_dataset
from src.data.patches import DIST_UNITS_PER_MM
from src.evaluation.baselines import SphereSegmenter
from src.evaluation.cases import load_cases
from src.evaluation.metrics import dice
from src.predict.experiment import TrainedExperiment
from src.predict.predictor import Predictor
from src.predict.segment import NetworkSegmenter
from src.runtime import Runtime
from src.train.datasets import select_patches
from src.utils import atomic_path, progress


def apply_prior(prob: np.ndarray, coarse_dist_mm: np.ndarray, margin_mm: float) -> np.ndarray:
    """Zero the probability beyond ``margin_mm`` outside every coarse sphere."""
    return np.where(coarse_dist_mm <= margin_mm, prob, 0.0).astype(prob.dtype)


def write_pseudo_labels(ctx: StageContext, rt: Runtime) -> tuple[Path, pd.DataFrame]:
    cfg: PseudoConfig = ctx.cfg.pseudo
    splits = split_uids(ctx.folds, None)
    selection = select_patches(ctx.cache, ctx.folds, splits["train"])
    order = np.argsort(selection.indices)
    rows, constrained = selection.indices[order], ~selection.fine_ok[order]
    refuse_holdout(ctx.cache.patches["seriesuid"].to_numpy()[rows], splits[HOLDOUT], "pseudo-labelling")

    ensemble = TrainedExperiment(ctx.layout, ctx.cfg).models("ensemble", rt, tta=cfg.tta, fpr=False,
                                                              cache_hash=ctx.cache_hash, batch_size=cfg.batch_size)
    predictor, paths = ensemble.predictor, ensemble.checkpoints
    out = ctx.layout.pseudo_labels
    attrs = dict(cache_hash=ctx.cache_hash, folds_hash=ctx.folds_hash, config=json.dumps(to_dict(cfg)),
                 code_version=code_version(), teachers=json.dumps([str(t) for t in paths]),
                 teacher_files=json.dumps([file_hash(t) for t in paths]))   # retrained teachers: new labels
    # what the labels are a function of: batches of another pass are never reused
    inputs = {k: v for k, v in attrs.items() if k not in ("code_version", "teachers")}
    parts = ctx.layout.pseudo_parts(config_hash({**inputs, "rows": hashlib.sha1(rows.tobytes()).hexdigest()}))
    starts = range(0, len(rows), cfg.batch_size)
    todo = [s for s in starts if not _batch_path(parts, s).is_file()]
    if len(todo) < len(starts):
        print(f"resumed the pseudo-labels: {len(starts) - len(todo)} of {len(starts)} batches were done")
    for start in progress(todo, desc="pseudo-labels"):
        batch = slice(start, start + cfg.batch_size)
        with atomic_path(_batch_path(parts, start), suffix=".npy") as tmp:
            np.save(tmp, _soft_labels(ctx, predictor, rows[batch], constrained[batch], cfg))
    with atomic_path(out, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(attrs)
        f.create_dataset("rows", data=rows.astype(np.int64))
        f.create_dataset("constrained", data=constrained)
        soft = f.create_dataset("soft", (len(rows), ctx.patch_size, ctx.patch_size), np.float16,
                                chunks=(1, ctx.patch_size, ctx.patch_size))
        for start in starts:
            soft[start:start + cfg.batch_size] = np.load(_batch_path(parts, start))
    for finished in ctx.layout.root.glob(ctx.layout.pseudo_parts("*").name):   # other passes' too: superseded
        shutil.rmtree(finished, ignore_errors=True)
    return out, pseudo_quality(ctx, predictor, out)


def _batch_path(parts: Path, start: int) -> Path:
    return parts / f"rows_{start:09d}.npy"


def _soft_labels(ctx: StageContext, predictor: Predictor, idx: np.ndarray, constrained: np.ndarray,
                 cfg: PseudoConfig) -> np.ndarray:
    """The ensemble's soft labels of cache rows ``idx``, the coarse prior applied where ``constrained``."""
    dist = ctx.cache.file["patches/coarse_dist"][idx].astype(np.float32) / DIST_UNITS_PER_MM
    # every training scan's coordinates are known: prompted teachers are told them
    prob = predictor.prob(ctx.cache.file["patches/image"][idx], dist, cfg.temperature)
    prob[constrained] = apply_prior(prob[constrained], dist[constrained], cfg.prior_margin_mm)
    return prob.astype(np.float16)


def pseudo_quality(ctx: StageContext, predictor: Predictor, pseudo_path: Path) -> pd.DataFrame:
    """Pseudo-labels of coarse scans vs their withheld fine masks: per nodule in 3D (the
    ensemble through the one scoring path, at the OOF-chosen threshold) and per patch (the
    stored soft labels at 0.5). Empty if no truth is known."""
    coarse = development_uids(ctx.folds, "coarse")
    records = [r for r in read_dataset(ctx.cfg.paths) if r.seriesuid in coarse]
    cases = load_cases(records, ctx.cache.config, ctx.cfg.infer, desc="read coarse scans")
    threshold, _ = ctx.layout.threshold(ctx.cfg.infer)
    segmenter = NetworkSegmenter(predictor, ctx.k, sphere_fallback=False)   # the labels' quality, not the sphere's
    meta = ctx.cache.patches
    rows = []
    with h5py.File(pseudo_path, "r") as f:
        stored, soft = f["rows"][()], f["soft"]
        for case in progress(cases, desc="pseudo quality"):
            scored = case.score(case.segment(segmenter, ctx.cfg.infer, threshold))
            # the same nodule's 2.5D patches, as stored in pseudo.h5 (both row lists sorted)
            mine = np.flatnonzero((meta["nodule_uid"] == case.nodule.nodule_uid).to_numpy())
            truth = ctx.cache.file["patches/fine"][mine] > 0
            patch_dice = [dice(soft[j] >= 0.5, t) for j, t in zip(np.searchsorted(stored, mine), truth) if t.any()]
            rows.append(dict(**case.describe(), dice_3d=scored["dice"], nsd_3d=scored["nsd"],
                             patch_dice=float(np.mean(patch_dice)) if patch_dice else np.nan,
                             sphere_dice=case.score(case.segment(SphereSegmenter(), ctx.cfg.infer, BINARY_LEVEL))["dice"]))
    return pd.DataFrame(rows)

