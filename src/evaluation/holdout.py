"""Hold-out leaderboard: every model scored on patients no teacher or student trained on.

Rows: each fold teacher, the teacher ensemble, the student, and three references that need
no training: the coarse sphere itself, HU thresholding inside it (the threshold fit on the
training scans' fine nodules), and each nodule's own half-max level inside it. All go through the one scoring path
(``src.evaluation.cases``), as the CV leaderboard and ``infer.py`` + ``evaluate.py`` do,
the networks at the threshold chosen on OOF, the baselines at their 0/1 edge. Speed
columns are measured in the same run.
"""
from __future__ import annotations

import pandas as pd

from src.config import InferConfig
from src.data.classical import BINARY_LEVEL, HalfMaxSegmenter
from src.data.context import StageContext
from src.data.folds import development_uids, holdout_uids
from src.data.manifest import read_dataset
from src.evaluation.baselines import SphereSegmenter, ThresholdSegmenter, fit_threshold
from src.evaluation.cases import NoduleCase, load_cases
from src.evaluation.speed import speed_table
from src.predict.experiment import TrainedExperiment
from src.predict.segment import NetworkSegmenter
from src.runtime import Runtime
from src.utils import atomic_to_csv, progress


def split_cases(ctx: StageContext, uids: set[str], desc: str) -> list[NoduleCase]:
    records = [r for r in read_dataset(ctx.cfg.paths) if r.seriesuid in uids]
    return load_cases(records, ctx.cache.config, ctx.cfg.infer, desc=desc)


def build_segmenters(ctx: StageContext, rt: Runtime) -> tuple[dict, pd.DataFrame]:
    """name -> (segmenter, probability threshold), and the speed table of the learned ones:
    the networks as ``infer.py`` loads them (``TrainedExperiment``), at its threshold."""
    cfg, k = ctx.cfg, ctx.k
    experiment = TrainedExperiment(ctx.layout, cfg)
    ensemble, student = (experiment.models(m, rt, tta=False, fpr=False, cache_hash=ctx.cache_hash)
                         for m in ("ensemble", "student"))
    teachers = ensemble.predictor.members()
    predictors = {f"teacher fold {p.models[0].checkpoint_meta['fold']}": p for p in teachers}
    predictors["teacher ensemble"] = ensemble.predictor
    predictors["student"] = student.predictor

    # the baseline may learn from what the networks learn from: masks of `fine` training scans
    fine = development_uids(ctx.folds, "fine")
    hu, fit_dice = fit_threshold(split_cases(ctx, fine, "read fine training scans"), k, cfg.infer)
    segmenters = {name: (NetworkSegmenter(p, k), student.threshold if name == "student" else ensemble.threshold)
                  for name, p in predictors.items()}
    segmenters["coarse sphere (no training)"] = (SphereSegmenter(), BINARY_LEVEL)
    segmenters[f"HU >= {hu:.0f} in sphere (fit on train)"] = (ThresholdSegmenter(hu, k, cfg.infer.prior_margin_mm),
                                                              BINARY_LEVEL)
    segmenters["half-max in sphere (no training)"] = (HalfMaxSegmenter(k, cfg.infer.prior_margin_mm), BINARY_LEVEL)
    speed = speed_table(predictors, ctx.cache, k, ctx.patch_size)
    speed.attrs.update(n_teachers=len(teachers), threshold_hu=hu, threshold_fit_dice=fit_dice)
    return segmenters, speed


def score_cases(cases: list[NoduleCase], segmenters: dict, cfg: InferConfig) -> pd.DataFrame:
    """One row per (model, case): ``segmenters`` maps a name to (segmenter, threshold)."""
    rows = []
    for case in progress(cases, desc="score nodules"):
        for name, (segmenter, threshold) in segmenters.items():
            rows.append(dict(model=name, **case.score(case.segment(segmenter, cfg, threshold))))
    return pd.DataFrame(rows)


def score_holdout(ctx: StageContext, segmenters: dict) -> pd.DataFrame:
    """One row per (model, hold-out nodule with a fine mask), on the scans' own grids."""
    cases = split_cases(ctx, holdout_uids(ctx.folds), "read hold-out scans")
    return score_cases(cases, segmenters, ctx.cfg.infer)


def holdout_board(ctx: StageContext, rt: Runtime) -> tuple[pd.DataFrame, str, pd.DataFrame]:
    """Every model and reference on the hold-out nodules (holdout_nodules.csv) -> (per-nodule
    rows, the board's title, the speed table)."""
    experiment = TrainedExperiment(ctx.layout, ctx.cfg)
    (threshold, source), (own, own_source) = experiment.threshold(), experiment.threshold("student")
    print(f"probability threshold {threshold} from {source}; the student's {own} from {own_source}")
    segmenters, speed = build_segmenters(ctx, rt)
    per_nodule = score_holdout(ctx, segmenters)
    atomic_to_csv(per_nodule, ctx.layout.per_nodule("holdout"), float_format="%.5g")
    title = (f"{ctx.cfg.paths.experiment}: hold-out ({per_nodule['seriesuid'].nunique()} scans, "
             f"{per_nodule['nodule_uid'].nunique()} nodules) at threshold {threshold} (student {own}); student "
             f"throughput = {speed.attrs['student_over_ensemble']:.1f}x the {speed.attrs['n_teachers']}-teacher ensemble")
    return per_nodule, title, speed.round(3)
