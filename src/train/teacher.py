"""Stage 2: the teacher of fold K - a hybrid-encoder UNet trained on every non-hold-out
patient outside fold K, validated per nodule on fold K (out-of-fold, OOF).

Outputs in ``outputs/<experiment>/teacher/fold_K/`` (``src.layout``): args.yaml,
summary.csv, training_curves.png, checkpoint_{last,best,final}.pt, and the OOF predictions
of the best checkpoint: val_metrics.csv (one row per nodule, at ``infer.threshold``) and
val_predictions.h5 (probabilities, for the threshold choice of cv.py).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from src.config import dump_config, to_dict
from src.data.context import StageContext
from src.data.folds import HOLDOUT, refuse_holdout, split_uids
from src.errors import DataError
from src.models.factory import build_model
from src.runtime import Runtime
from src.train.augment import Augmenter
from src.train.datasets import PatchDataset, sampling_weights, select_patches
from src.train.objectives import TeacherObjective
from src.train.trainer import RunInfo, Trainer
from src.train.validation import scan_validator, write_validation_predictions
from src.utils import seed_everything


def train_teacher(ctx: StageContext, fold: int, rt: Runtime, resume: bool = False) -> tuple[Path, pd.DataFrame]:
    cfg, stage = ctx.cfg, ctx.cfg.teacher
    splits = split_uids(ctx.folds, fold)
    if not splits["val"]:
        raise DataError(f"fold {fold} has no scans in {cfg.paths.folds}")
    refuse_holdout(splits["train"] | splits["val"], splits[HOLDOUT], f"fold {fold}'s training or validation set")
    seed_everything(stage.seed + fold)
    out_dir = ctx.layout.teacher_dir(fold)
    objective = TeacherObjective(stage.loss)
    selection = select_patches(ctx.cache, ctx.folds, splits["train"])
    if not objective.learns_from_coarse:
        selection = selection.only_fine()
    weights = sampling_weights(ctx.cache.patches.iloc[selection.indices], selection.fine_ok,
                               stage.positive_fraction, stage.fine_share, stage.loss.small_nodule_boost,
                               stage.loss.nonsolid_boost)
    dataset = PatchDataset(ctx.cache, selection, Augmenter(cfg.augment), views=2 if objective.needs_two_views else 1,
                           prompt_dropout=stage.prompt_dropout if stage.model.prompt else None)
    model = build_model(stage.model, ctx.k, ctx.patch_size)
    info = RunInfo(stage="teacher", fold=fold, model_config=to_dict(stage.model), in_channels=ctx.k,
                   patch_size=ctx.patch_size, config=to_dict(cfg), cache_hash=ctx.cache_hash,
                   config_hash=ctx.run_hash(stage, cfg.augment, {"fold": fold}),
                   extra={"train_uids": sorted(splits["train"]), "val_uids": sorted(splits["val"])})
    validator = scan_validator(ctx, splits["val"], rt, cfg.infer.threshold, "read validation scans") \
        if rt.is_main else None
    out_dir.mkdir(parents=True, exist_ok=True)
    if rt.is_main:   # only once everything the run needs was found and built
        dump_config(cfg, ctx.layout.run_config(out_dir))
    trainer = Trainer(stage, model, objective, dataset, weights, validator, out_dir, rt, info,
                      select_metric="val_dice")
    if resume and trainer.resume() and rt.is_main:
        print(f"resumed fold {fold} at epoch {trainer.epoch}, step {trainer.step_in_epoch}")
    trainer.fit()
    oof = write_validation_predictions(ctx, validator, ctx.layout.teacher_checkpoint(fold), out_dir, fold) \
        if rt.is_main else pd.DataFrame()
    return out_dir, oof
