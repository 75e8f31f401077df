"""Pseudo-labels and the student: coarse prior, hold-out isolation, checkpoints."""
import json
import time
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from src.data.folds import split_uids
from src.data.patches import DIST_UNITS_PER_MM
from src.evaluation.speed import patches_per_second
from src.models.checkpoint import model_from_checkpoint
from src.train.pseudo import apply_prior


def test_pseudo_labels_respect_the_coarse_prior(tiny_trained):
    ctx = tiny_trained
    margin = ctx.cfg.pseudo.prior_margin_mm
    with h5py.File(ctx.layout.pseudo_labels, "r") as f:
        rows, soft, constrained = f["rows"][()], f["soft"][()].astype(np.float32), f["constrained"][()]
        assert f.attrs["cache_hash"] == ctx.cache_hash
    assert soft.min() >= 0.0 and soft.max() <= 1.0
    dist = ctx.cache.file["patches/coarse_dist"][rows].astype(np.float32) / DIST_UNITS_PER_MM
    outside = (dist > margin) & constrained[:, None, None]
    assert outside.any() and (soft[outside] == 0).all(), "coarse patches: zero outside sphere + margin"
    assert constrained.any() and (~constrained).any()
    assert (soft[~constrained] > 0).any(), "fine patches keep the unconstrained ensemble output"


def test_apply_prior():
    prob = np.full((2, 4), 0.7, np.float32)
    dist = np.array([[-1.0, 0.0, 2.0, 2.5], [9, 9, 9, 9]], np.float32)
    np.testing.assert_allclose(apply_prior(prob, dist, 2.0), [[0.7, 0.7, 0.7, 0.0], [0, 0, 0, 0]], rtol=1e-6)


def test_holdout_never_enters_pseudo_labels_or_training(tiny_trained):
    ctx = tiny_trained
    holdout = split_uids(ctx.folds, None)["holdout"]
    assert holdout
    with h5py.File(ctx.layout.pseudo_labels, "r") as f:
        rows = f["rows"][()]
    assert not set(ctx.cache.patches["seriesuid"].to_numpy()[rows]) & holdout
    for path in [*ctx.layout.teacher_checkpoints(), ctx.layout.student_checkpoint()]:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        seen = set(ckpt["train_uids"]) | set(ckpt.get("val_uids", []))
        assert seen and not seen & holdout, path


def test_student_checkpoint_loads_weights_only(tiny_trained):
    path = tiny_trained.layout.student_checkpoint()
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["stage"] == "student" and ckpt["model_config"]["encoder"] == tiny_trained.cfg.student.model.encoder
    threshold, source = tiny_trained.layout.threshold(tiny_trained.cfg.infer, "student")
    assert ckpt["threshold"] == threshold, "the student carries its own threshold"
    assert tiny_trained.layout.student_postprocessing.name in source
    choice = json.loads(tiny_trained.layout.student_postprocessing.read_text())
    # chosen as the teachers' is, on the student's own validation nodules (the fine training scans)
    assert choice["threshold"] == float(max(choice["oof_dice_at_threshold"].items(),
                                            key=lambda kv: (round(kv[1], 6), -abs(float(kv[0]) - 0.5)))[0])
    assert choice["nodules"] > 0 and "fine" in choice["validated_on"]
    model = model_from_checkpoint(path)
    with torch.inference_mode():
        assert model(torch.zeros(1, tiny_trained.k + 1, 64, 96)).shape == (1, 1, 64, 96)   # slices + prompt


class _SleepyPredictor:
    """Stands in for a Predictor whose pass over any input takes `seconds`."""
    def __init__(self, seconds):
        self.seconds, self.batch_size, self.rt = seconds, 4, SimpleNamespace(device=torch.device("cpu"))

    def logits(self, stacks):
        time.sleep(self.seconds)


def test_throughput_counts_every_pass_of_every_model():
    stacks = np.zeros((20, 5, 8, 8), np.int16)
    rates = patches_per_second({"fast": _SleepyPredictor(0.02), "slow": _SleepyPredictor(0.06)}, stacks,
                               rounds=2, min_seconds=0.15)
    assert rates["fast"] == pytest.approx(20 / 0.02, rel=0.3)
    assert rates["slow"] == pytest.approx(20 / 0.06, rel=0.3)


def test_throughput_is_timed_on_cache_patches_and_on_whole_lung_slices(tiny_trained, cpu_runtime):
    """Whole-scan search feeds the networks lung-box slices: the speed table times those too,
    cut from the middle of the lungs exactly as predict_volume cuts them."""
    from src.data.luna16 import read_luna16
    from src.evaluation.speed import lung_slices, speed_table
    from src.predict.detect import lung_box, lung_region
    from src.predict.experiment import TrainedExperiment
    from src.predict.segment import to_model_volume
    ctx = tiny_trained
    mv = to_model_volume(read_luna16(ctx.cfg.paths.data)[0].load(with_masks=False), ctx.cache.config)
    zs, (y0, x0), (h, w) = lung_box(lung_region(mv))
    slices = lung_slices(mv, n=4)
    assert slices.shape == (min(4, len(zs)), ctx.k, h, w)
    first = zs[max(len(zs) // 2 - 2, 0)]   # the middle four lung slices; each stack's centre is its own slice
    np.testing.assert_array_equal(slices[0, ctx.k // 2], mv.stacks([first], y0, x0, (h, w))[0])

    experiment = TrainedExperiment(ctx.layout, ctx.cfg)
    ensemble, student = (experiment.models(m, cpu_runtime, tta=False, fpr=False).predictor
                         for m in ("ensemble", "student"))
    table = speed_table({"teacher ensemble": ensemble, "student": student}, ctx.cache, ctx.k, ctx.patch_size,
                        slices).set_index("model")
    assert (table[["patches_per_s", "lung_slices_per_s"]] > 0).all().all()
    assert table.loc["teacher ensemble", "lung_slices vs ensemble"] == pytest.approx(1.0)
    assert table.loc["student", "lung_slices vs ensemble"] == pytest.approx(
        table.loc["student", "lung_slices_per_s"] / table.loc["teacher ensemble", "lung_slices_per_s"])


def test_soft_targets_can_be_kept_to_some_rows(tiny_trained):
    """The 'KD on fine scans only' ablation: rows left out have no soft target."""
    from src.train.student import SoftTargets
    ctx = tiny_trained
    with h5py.File(ctx.layout.pseudo_labels, "r") as f:
        rows = f["rows"][()]
    every = SoftTargets(ctx.layout.pseudo_labels, ctx.cache_hash, ctx.folds_hash)
    some = SoftTargets(ctx.layout.pseudo_labels, ctx.cache_hash, ctx.folds_hash, only_rows=rows[:2])
    assert some.get(int(rows[0])) is not None and np.array_equal(some.get(int(rows[1])), every.get(int(rows[1])))
    assert every.get(int(rows[-1])) is not None and some.get(int(rows[-1])) is None


def test_the_student_resumes_only_onto_the_same_pseudo_labels(tiny_trained, tmp_path):
    """Pseudo-labels name their teachers' checkpoint files by hash: labels remade after the
    teachers were retrained are other labels, so the student's run (its resume check) differs."""
    import shutil

    from src.data.folds import file_hash
    from src.train.student import SoftTargets
    ctx = tiny_trained
    with h5py.File(ctx.layout.pseudo_labels, "r") as f:
        teachers = json.loads(f.attrs["teachers"])
        assert json.loads(f.attrs["teacher_files"]) == [file_hash(t) for t in teachers]
    copy = shutil.copy(ctx.layout.pseudo_labels, tmp_path / "pseudo.h5")
    same = SoftTargets(copy, ctx.cache_hash, ctx.folds_hash).identity
    assert same == SoftTargets(ctx.layout.pseudo_labels, ctx.cache_hash, ctx.folds_hash).identity   # not the path
    with h5py.File(copy, "a") as f:   # as if one teacher had been retrained
        f.attrs["teacher_files"] = json.dumps(["0" * 12, *json.loads(f.attrs["teacher_files"])[1:]])
    assert SoftTargets(copy, ctx.cache_hash, ctx.folds_hash).identity != same
