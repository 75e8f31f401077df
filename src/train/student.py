"""Stage 4: one fast student distilled from the teacher ensemble.

Trains on every non-hold-out patient: fine masks where ``label_kind`` is fine, and the
ensemble's soft targets from pseudo.h5 everywhere (KD, weighted toward the nodule region;
``distill.coarse_pseudo=false`` keeps them to the fine scans, an ablation),
optionally with attention transfer from one fold teacher's encoder. No patient is left
out of the student's training (the hold-out is only for the final score), so it validates
on the nodules of the fine-mask development scans, the only masks a user has: the best
epoch, and afterwards its own probability threshold (``student/postprocessing.json``,
which ``infer.py``, the leaderboards and the ONNX export apply to it). These nodules are
in its training set, which the note in that file says. Outputs in
``outputs/<experiment>/student/``, with the teachers' conventions; the best and final
checkpoints carry the student's threshold too.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from src.config import dump_config, to_dict
from src.data.context import StageContext
from src.data.folds import HOLDOUT, development_uids, refuse_holdout, split_uids
from src.errors import ConfigError, DataError
from src.evaluation.oof import choose_threshold, read_oof
from src.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from src.models.factory import build_model
from src.runtime import Runtime
from src.train.augment import Augmenter
from src.train.datasets import PatchDataset, sampling_weights, select_patches
from src.train.objectives import StudentObjective
from src.train.trainer import RunInfo, Trainer
from src.train.validation import NoduleValidator, scan_validator, write_validation_predictions
from src.utils import seed_everything


class SoftTargets:
    """Soft labels of pseudo.h5 by cache row; the file opens lazily in each worker."""

    def __init__(self, path: Path, cache_hash: str, folds_hash: str, only_rows: np.ndarray | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no pseudo-labels; run pseudo_label.py first")
        with h5py.File(self.path, "r") as f:
            if f.attrs["cache_hash"] != cache_hash or f.attrs["folds_hash"] != folds_hash:
                raise DataError(f"{self.path}: made from another cache or folds.csv; rerun pseudo_label.py")
            self.rows = f["rows"][()]
            # what the student's resume checks: the labels' teachers and settings (older files: the path)
            self.identity = {k: str(f.attrs[k]) for k in ("teacher_files", "config") if k in f.attrs} or str(self.path)
        # positions in the file stay those of the stored rows; rows left out just have no target
        self.use = np.isin(self.rows, only_rows) if only_rows is not None else np.ones(len(self.rows), bool)
        self._file = None

    def __getstate__(self):
        return {**self.__dict__, "_file": None}

    def get(self, row: int) -> np.ndarray | None:
        pos = int(np.searchsorted(self.rows, row))
        if pos >= len(self.rows) or self.rows[pos] != row or not self.use[pos]:
            return None
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return self._file["soft"][pos]


def train_student(ctx: StageContext, rt: Runtime, resume: bool = False) -> Path:
    cfg, stage = ctx.cfg, ctx.cfg.student
    splits = split_uids(ctx.folds, None)
    refuse_holdout(splits["train"], splits[HOLDOUT], "the student's training set")
    seed_everything(stage.seed)
    out_dir = ctx.layout.student_dir
    ctx.layout.student_postprocessing.unlink(missing_ok=True)   # an earlier student's choice is not this one's
    threshold, source = ctx.layout.threshold(cfg.infer)
    print(f"validating at the teachers' probability threshold {threshold} from {source}")

    selection = select_patches(ctx.cache, ctx.folds, splits["train"])
    fine_rows = None if cfg.distill.coarse_pseudo else selection.indices[selection.fine_ok]
    soft = SoftTargets(ctx.layout.pseudo_labels, ctx.cache_hash, ctx.folds_hash, only_rows=fine_rows)
    weights = sampling_weights(ctx.cache.patches.iloc[selection.indices], selection.fine_ok,
                               stage.positive_fraction, stage.fine_share, stage.loss.small_nodule_boost,
                               stage.loss.nonsolid_boost)
    dataset = PatchDataset(ctx.cache, selection, Augmenter(cfg.augment), soft_targets=soft,
                           prompt_dropout=stage.prompt_dropout if stage.model.prompt else None)
    feature_teacher = None
    if cfg.distill.feature_weight > 0:
        path = ctx.layout.teacher_checkpoint(cfg.distill.feature_teacher_fold)
        feature_teacher = model_from_checkpoint(path).to(rt.device)
        if feature_teacher.prompted != stage.model.prompt:
            raise ConfigError(f"{path}: attention transfer needs teacher and student to share their input; "
                              f"the teacher is {'' if feature_teacher.prompted else 'not '}prompted, "
                              f"student.model.prompt is {stage.model.prompt}")
    objective = StudentObjective(stage.loss, cfg.distill, feature_teacher)
    model = build_model(stage.model, ctx.k, ctx.patch_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rt.is_main:   # only once everything the run needs was found and built
        dump_config(cfg, ctx.layout.run_config(out_dir))
    info = RunInfo(stage="student", fold=None, model_config=to_dict(stage.model), in_channels=ctx.k,
                   patch_size=ctx.patch_size, config=to_dict(cfg), cache_hash=ctx.cache_hash,
                   config_hash=ctx.run_hash(stage, cfg.augment, cfg.distill, {"pseudo": soft.identity}),
                   extra={"train_uids": sorted(splits["train"]), "threshold": threshold,
                          "threshold_source": source})
    validator = scan_validator(ctx, development_uids(ctx.folds, "fine"), rt, threshold, "read fine training scans") \
        if rt.is_main else None
    if validator is not None and len(validator.cases) < cfg.infer.min_validation_nodules:
        print(f"note: the fine training scans hold {len(validator.cases)} scored nodule(s), fewer than "
              f"infer.min_validation_nodules={cfg.infer.min_validation_nodules}: no validation; the student's "
              f"latest epoch is its best, at the teachers' threshold {threshold}")
        validator = None
    trainer = Trainer(stage, model, objective, dataset, weights, validator, out_dir, rt, info,
                      select_metric="val_dice")
    if resume and trainer.resume() and rt.is_main:
        print(f"resumed the student at epoch {trainer.epoch}, step {trainer.step_in_epoch}")
    trainer.fit()
    if validator is not None:
        choose_student_threshold(ctx, validator)
    return out_dir


def choose_student_threshold(ctx: StageContext, validator: NoduleValidator) -> dict:
    """The student's own probability threshold, chosen as cv.py chooses the teachers' (best
    pooled Dice over ``THRESHOLDS``) on its validation nodules, with its best checkpoint:
    a small network is calibrated unlike the ensemble it learnt from."""
    out_dir = ctx.layout.student_dir
    write_validation_predictions(ctx, validator, ctx.layout.student_checkpoint(), out_dir, fold=-1)
    choice = choose_threshold(read_oof([ctx.layout.oof_predictions(out_dir)]))
    choice["validated_on"] = "the fine-mask development scans (the student trains on every development scan)"
    ctx.layout.write_postprocessing(choice, "student")
    for kind in ("best", "final"):   # a checkpoint used on its own (--checkpoint) carries it too
        path = ctx.layout.student_checkpoint(kind)
        save_checkpoint({**load_checkpoint(path), "threshold": choice["threshold"],
                         "threshold_source": str(ctx.layout.student_postprocessing)}, path)
    dice_at = choice["oof_dice_at_threshold"]
    print(f"the student's threshold: {choice['threshold']} (Dice {dice_at[choice['threshold']]:.4f} on "
          f"{choice['nodules']} nodules of the fine training scans; {dice_at[0.5]:.4f} at 0.5)")
    return choice
