"""Stage 2: the teacher of fold K - a hybrid-encoder UNet trained on every non-hold-out
patient outside fold K, validated per nodule on fold K (out-of-fold, OOF).

Outputs in ``outputs/<experiment>/teacher/fold_K/``: args.yaml, summary.csv,
training_curves.png, checkpoint_{last,best,final}.pt, and the OOF predictions of the best
checkpoint: val_metrics.csv (one row per nodule) and val_predictions.h5 (probabilities).
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from src.config import dump_config, to_dict
from src.data.augment import Augmenter
from src.data.dataset import PatchDataset, sampling_weights, select_patches
from src.data.folds import split_uids
from src.engine.checkpoint import model_from_checkpoint
from src.engine.context import StageContext
from src.engine.evaluate import evaluate_nodules, evaluate_patches, summarize_nodules
from src.engine.objectives import TeacherObjective
from src.engine.runtime import Runtime
from src.engine.trainer import RunInfo, Trainer
from src.infer.predictor import Predictor
from src.models.factory import build_model
from src.utils import atomic_path, atomic_to_csv, seed_everything


class FoldValidator:
    """Per-nodule 3D Dice (the selection metric) and per-patch Dice on fold K."""

    def __init__(self, ctx: StageContext, val_uids: set[str], rt: Runtime):
        self.ctx, self.rt = ctx, rt
        nodules = ctx.cache.nodules
        self.nodules = nodules[nodules["seriesuid"].isin(val_uids) & nodules["has_fine"].astype(bool)]
        patches = ctx.cache.patches
        self.patch_rows = np.flatnonzero((patches["seriesuid"].isin(val_uids) &
                                          (patches["label_kind"] == "fine")).to_numpy())
        self.stage = ctx.cfg.teacher

    def predictor(self, model) -> Predictor:
        return Predictor([model], self.rt, self.ctx.window, batch_size=self.stage.val_batch_size)

    def __call__(self, model) -> dict[str, float]:
        infer = self.ctx.cfg.infer
        table, _ = evaluate_nodules(self.predictor(model), self.ctx.cache, self.nodules, infer)
        metrics = summarize_nodules(table)
        metrics["val_patch_dice"] = evaluate_patches(self.predictor(model), self.ctx.cache, self.patch_rows,
                                                     infer.threshold)
        return metrics


def write_oof(validator: FoldValidator, checkpoint: Path, out_dir: Path, fold: int) -> pd.DataFrame:
    """Score the best checkpoint on fold K and keep its predictions (OOF)."""
    model = model_from_checkpoint(checkpoint)
    table, probs = evaluate_nodules(validator.predictor(model), validator.ctx.cache, validator.nodules,
                                    validator.ctx.cfg.infer, keep_probs=True, desc="OOF")
    table.insert(0, "fold", fold)
    atomic_to_csv(table, out_dir / "val_metrics.csv", float_format="%.5g")
    with atomic_path(out_dir / "val_predictions.h5", suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(fold=fold, checkpoint=str(checkpoint), cache_hash=validator.ctx.cache_hash)
        for row in validator.nodules.itertuples(index=False):
            ds = f.create_dataset(f"prob/{row.roi}", data=probs[row.nodule_uid])
            ds.attrs.update(nodule_uid=row.nodule_uid, roi_origin_zyx=[row.roi_z0, row.roi_y0, row.roi_x0])
    return table


def train_teacher(ctx: StageContext, fold: int, rt: Runtime, resume: bool = False) -> tuple[Path, pd.DataFrame]:
    cfg, stage = ctx.cfg, ctx.cfg.teacher
    splits = split_uids(ctx.folds, fold)
    if not splits["val"]:
        raise ValueError(f"fold {fold} has no scans in {cfg.paths.folds}")
    assert not (splits["train"] | splits["val"]) & splits["holdout"], "hold-out scans leaked into a fold"
    seed_everything(stage.seed + fold)
    out_dir = ctx.teacher_dir(fold)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rt.is_main:
        dump_config(cfg, out_dir / "args.yaml")

    objective = TeacherObjective(stage.loss)
    selection = select_patches(ctx.cache, ctx.folds, splits["train"])
    weights = sampling_weights(ctx.cache.patches.iloc[selection.indices], selection.fine_ok,
                               stage.positive_fraction, stage.fine_share, stage.loss.small_nodule_boost)
    dataset = PatchDataset(ctx.cache, selection, Augmenter(cfg.augment), views=2 if objective.needs_two_views else 1)
    model = build_model(stage.model, ctx.k, ctx.patch_size)
    info = RunInfo(stage="teacher", fold=fold, model_config=to_dict(stage.model), in_channels=ctx.k,
                   patch_size=ctx.patch_size, config=to_dict(cfg), cache_hash=ctx.cache_hash,
                   config_hash=ctx.run_hash(stage, cfg.augment, {"fold": fold}),
                   extra={"train_uids": sorted(splits["train"]), "val_uids": sorted(splits["val"])})
    validator = FoldValidator(ctx, splits["val"], rt)
    trainer = Trainer(stage, model, objective, dataset, weights, validator, out_dir, rt, info,
                      select_metric="val_dice", checkpoint_every_steps=max(1, stage.steps_per_epoch // 4))
    if resume and trainer.resume() and rt.is_main:
        print(f"resumed fold {fold} at epoch {trainer.epoch}, step {trainer.step_in_epoch}")
    trainer.fit()
    oof = write_oof(validator, out_dir / "checkpoint_best.pt", out_dir, fold) if rt.is_main else pd.DataFrame()
    return out_dir, oof
