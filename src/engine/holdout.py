"""Hold-out leaderboard: every model scored on patients no teacher or student trained on.

Rows: each fold teacher, the teacher ensemble, the student, and two references that need
no training - the coarse sphere itself, and HU thresholding inside it (threshold chosen on
the training scans' fine nodules). All go through mode 1 of ``infer.py``
(``segment_nodule``) in each scan's own geometry, so ``infer.py`` + ``evaluate.py`` on the
hold-out scans reproduce these numbers. Speed columns are measured in the same run.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from src.data.folds import split_uids
from src.data.manifest import read_dataset
from src.engine.context import StageContext
from src.engine.pseudo import load_ensemble
from src.engine.runtime import Runtime
from src.engine.checkpoint import model_from_checkpoint
from src.engine.speed import gflops_per_patch, patches_per_second
from src.infer.predictor import Predictor
from src.infer.scoring import nodule_scores
from src.infer.segment import (NetworkSegmenter, SphereSegmenter, ThresholdSegmenter, fit_threshold,
                               segment_nodule, to_model_volume)
from src.models.factory import count_parameters

SPEED_PATCHES = 512
SPEED_BATCH = 128


def build_segmenters(ctx: StageContext, rt: Runtime) -> tuple[dict, pd.DataFrame]:
    """name -> segmenter, and the speed table of the learned ones."""
    cfg, k = ctx.cfg, ctx.k
    teachers = load_ensemble(ctx)
    student = model_from_checkpoint(ctx.student_dir / "checkpoint_best.pt")
    batch = cfg.infer.batch_size
    predictors = {f"teacher fold {m.checkpoint_meta['fold']}": Predictor([m], rt, ctx.window, batch_size=batch)
                  for m in teachers}
    predictors["teacher ensemble"] = Predictor(teachers, rt, ctx.window, batch_size=batch)
    predictors["student"] = Predictor([student], rt, ctx.window, batch_size=batch)

    # the baseline may learn from what the networks learn from: masks of `fine` training scans
    fine_scans = set(ctx.folds.loc[(ctx.folds["label_kind"] == "fine") & (ctx.folds["fold"] != "holdout"), "seriesuid"])
    nodules = ctx.cache.nodules
    fine_train = nodules[nodules["seriesuid"].isin(fine_scans) & nodules["has_fine"].astype(bool)]
    margin = cfg.infer.prior_margin_mm
    threshold, fit_dice = fit_threshold(ctx.cache, fine_train, k, margin)
    segmenters = {name: NetworkSegmenter(p, k) for name, p in predictors.items()}
    segmenters["coarse sphere (no training)"] = SphereSegmenter()
    segmenters[f"HU >= {threshold:.0f} in sphere (fit on train)"] = ThresholdSegmenter(threshold, k, margin)

    rows = np.sort(np.random.default_rng(0).choice(len(ctx.cache.patches), min(SPEED_PATCHES, len(ctx.cache.patches)),
                                                   replace=False))
    stacks = ctx.cache.file["patches/image"][rows]
    timed = {name: Predictor(p.models, rt, ctx.window, batch_size=SPEED_BATCH)  # same batch for every model
             for name, p in predictors.items()}
    rates = patches_per_second(timed, stacks)
    speed = pd.DataFrame([dict(model=name, params_M=sum(count_parameters(m) for m in p.models) / 1e6,
                               gflops_per_patch=sum(gflops_per_patch(m, k, ctx.patch_size) for m in p.models),
                               patches_per_s=rates[name]) for name, p in predictors.items()])
    ratio = float(speed.loc[speed["model"] == "student", "patches_per_s"].iloc[0] /
                  speed.loc[speed["model"] == "teacher ensemble", "patches_per_s"].iloc[0])
    speed["vs ensemble"] = speed["patches_per_s"] / float(
        speed.loc[speed["model"] == "teacher ensemble", "patches_per_s"].iloc[0])
    speed.attrs.update(student_over_ensemble=ratio, n_teachers=len(teachers), threshold_hu=threshold,
                       threshold_fit_dice=fit_dice)
    return segmenters, speed


def score_holdout(ctx: StageContext, segmenters: dict) -> pd.DataFrame:
    """One row per (model, hold-out nodule with a fine mask), native geometry."""
    cfg = ctx.cfg
    holdout = split_uids(ctx.folds, None)["holdout"]
    records = [r for r in read_dataset(cfg.paths.data, cfg.paths.manifest, cfg.paths.allow_partial)
               if r.seriesuid in holdout]
    reader = ctx.cache.nodules.set_index("nodule_uid")["reader_dice"]
    rows = []
    for record in tqdm(records, desc="hold-out scans"):
        scan = record.load()
        mv = to_model_volume(scan, ctx.cache.config)
        for nodule in (n for n in scan.nodules if n.fine_label):
            for name, segmenter in segmenters.items():
                seg = segment_nodule(mv, nodule.center_xyz, nodule.diameter_mm, segmenter, cfg.infer)
                row = nodule_scores(scan, nodule, seg.box, seg.mask)
                rows.append(dict(model=name, reader_dice=reader.get(nodule.nodule_uid, np.nan), **row))
    return pd.DataFrame(rows)
