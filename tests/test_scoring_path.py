"""One truth-free scoring path: the CV leaderboard, the hold-out leaderboard and
infer.py + evaluate.py measure the same thing, and predictions never depend on the truth."""
import dataclasses
import shutil
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

import evaluate
import infer
from src.data.luna16 import read_luna16
from src.evaluation.baselines import ThresholdSegmenter
from src.evaluation.cases import cases_from_scan, load_cases
from src.evaluation.holdout import score_cases
from src.evaluation.leaderboard import render, tidy
from src.evaluation.oof import read_oof, score_oof
from src.models.checkpoint import model_from_checkpoint
from src.predict.predictor import Predictor
from src.predict.segment import NetworkSegmenter, segment_nodule, to_model_volume
from src.runtime import setup_runtime


def _first_scan(tiny_cfg):
    record = read_luna16(tiny_cfg.paths.data)[2]
    return record, record.load()


def test_a_crop_segments_exactly_like_the_whole_scan(tiny_cfg, tiny_cache):
    _, scan = _first_scan(tiny_cfg)
    mv = to_model_volume(scan, tiny_cache.config)
    segmenter = ThresholdSegmenter(-400, tiny_cfg.cache.k_slices, tiny_cfg.infer.prior_margin_mm)
    cases = cases_from_scan(scan, tiny_cache.config, tiny_cfg.infer)   # each crop resampled on its own
    assert cases
    for case in cases:
        whole = segment_nodule(mv, case.nodule.center_xyz, case.nodule.diameter_mm, segmenter, tiny_cfg.infer, 0.5)
        crop = case.segment(segmenter, tiny_cfg.infer, 0.5)
        assert whole.box == crop.box
        np.testing.assert_array_equal(whole.prob, crop.prob)
        assert crop.mask.any() and not crop.fallback


def test_the_prediction_ignores_the_truth_beyond_the_window(tiny_cfg, tiny_cache):
    _, scan = _first_scan(tiny_cfg)
    segmenter = ThresholdSegmenter(-400, tiny_cfg.cache.k_slices, tiny_cfg.infer.prior_margin_mm)
    case = cases_from_scan(scan, tiny_cache.config, tiny_cfg.infer)[0]
    seg = case.segment(segmenter, tiny_cfg.infer, 0.5)
    before = case.score(seg)

    # the same nodule's mask, now reaching far beyond its coordinate window along z
    label = case.nodule.fine_label
    grown = scan.fine_mask.copy()
    zs = np.flatnonzero((grown == label).any(axis=(1, 2)))
    stop = min(zs[-1] + 12, grown.shape[0])
    footprint = (grown == label).any(axis=0)
    grown[zs[-1]:stop][:, footprint] = label
    assert seg.box[0].stop < stop, "the added truth lies beyond the window"
    grown_case = cases_from_scan(dataclasses.replace(scan, fine_mask=grown), tiny_cache.config, tiny_cfg.infer)[0]
    grown_seg = grown_case.segment(segmenter, tiny_cfg.infer, 0.5)
    assert grown_seg.box == seg.box
    np.testing.assert_array_equal(grown_seg.prob, seg.prob)
    np.testing.assert_array_equal(grown_seg.mask, seg.mask)
    after = grown_case.score(grown_seg)
    # only the score sees the new truth: more of it missed
    assert after["dice"] < before["dice"] and after["sensitivity"] < before["sensitivity"]
    assert after["precision"] >= before["precision"]


class _FindsNothing:
    def __init__(self, sphere_fallback: bool):
        self.sphere_fallback = sphere_fallback

    def __call__(self, image, dist):
        return np.zeros(dist.shape, np.float32)


def test_where_nothing_is_found_the_given_sphere_stands_in_flagged(tiny_cfg, tiny_cache):
    from src.evaluation.baselines import SphereSegmenter
    from src.evaluation.metrics import dice
    _, scan = _first_scan(tiny_cfg)
    case = cases_from_scan(scan, tiny_cache.config, tiny_cfg.infer)[0]
    seg = case.segment(_FindsNothing(sphere_fallback=True), tiny_cfg.infer, 0.5)
    assert seg.fallback and seg.mask.any() and case.score(seg)["sphere_fallback"]
    # without it (whole-scan search's stand-in, validation, threshold choice): the empty mask
    own = case.segment(_FindsNothing(sphere_fallback=False), tiny_cfg.infer, 0.5)
    assert not own.fallback and not own.mask.any() and case.score(own)["dice"] == 0.0
    # the given sphere on the scan's grid: the coarse-sphere reference's mask, and its volume
    sphere = case.segment(SphereSegmenter(), tiny_cfg.infer, 0.5)
    assert not sphere.fallback and seg.box == sphere.box
    assert dice(seg.mask, sphere.mask) > 0.9
    volume = seg.mask.sum() * np.prod(case.spacing_zyx)
    assert volume == pytest.approx(np.pi / 6 * case.nodule.diameter_mm ** 3, rel=0.25)


def _cli(module, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [module.__name__ + ".py", *argv])
    return module.main()


def test_cv_holdout_and_infer_give_the_same_dice(tiny_trained, tmp_path, monkeypatch):
    ctx = tiny_trained
    threshold, _ = ctx.layout.threshold(ctx.cfg.infer)
    fold = 0
    oof = score_oof([(f, n) for f, n in read_oof(ctx.layout.all_oof_predictions()) if f == fold], threshold)

    val = set(ctx.folds.loc[ctx.folds["fold"] == str(fold), "seriesuid"])
    records = [r for r in read_luna16(ctx.cfg.paths.data) if r.seriesuid in val]
    checkpoint = ctx.layout.teacher_checkpoint(fold)
    teacher = Predictor([model_from_checkpoint(checkpoint)], setup_runtime("cpu"), ctx.window,
                        batch_size=ctx.cfg.infer.batch_size)
    cases = load_cases(records, ctx.cache.config, ctx.cfg.infer)
    board = score_cases(cases, {"teacher": (NetworkSegmenter(teacher, ctx.k), threshold)}, ctx.cfg.infer)

    out = tmp_path / "coords"
    p = ctx.cfg.paths
    common = ["--set", f"paths.outputs={p.outputs}", f"paths.experiment={p.experiment}", f"paths.folds={p.folds}",
              f"paths.data={p.data}", f"paths.cache={p.cache}", "device=cpu", f"infer.threshold={threshold}",
              f"infer.batch_size={ctx.cfg.infer.batch_size}"]
    assert _cli(infer, ["--input", *[str(r.image_path) for r in records], "--coords", f"{p.data}/annotations.csv",
                        "--checkpoint", str(checkpoint), "--out", str(out), *common], monkeypatch) == 0
    _cli(evaluate, ["--pred", str(out), *common], monkeypatch)
    scored = pd.read_csv(out / "scores.csv")

    merged = oof.merge(board, on="nodule_uid", suffixes=("_cv", "_board")).merge(scored, on="nodule_uid")
    assert len(merged) == len(oof) == len(board) == len(scored) > 0
    for metric in ("dice", "hd95_mm", "nsd"):
        np.testing.assert_allclose(merged[f"{metric}_cv"], merged[f"{metric}_board"], atol=1e-9, err_msg=metric)
        # scores.csv is written with 5 significant digits
        np.testing.assert_allclose(merged[f"{metric}_cv"], merged[metric], rtol=1e-4, err_msg=metric)
    # the same nodules fall back to the given sphere on every path, and infer.py says which
    np.testing.assert_array_equal(merged["sphere_fallback_cv"], merged["sphere_fallback_board"])
    assert not merged["sphere_fallback_cv"].all(), "the networks' own masks are compared, not only spheres"
    source = pd.read_csv(out / "nodules.csv").set_index("nodule_uid")["source"]
    assert (source.loc[merged["nodule_uid"]].to_numpy() == "given sphere").tolist() == \
        merged["sphere_fallback_cv"].tolist()

    # each table carries the nodule's groups: the OOF file's attrs, the leaderboard's rows, scores.csv
    expected = {n.nodule_uid: n.attachment for r in records for n in r.load(with_image=False).nodules}
    for table in (oof, board, scored):
        assert dict(zip(table["nodule_uid"], table["attachment"])) == expected
    text = render(board, "tiny")
    for heading in ("Dice by nodule size (mm)", "Dice by texture", "Dice by attachment"):
        assert f"## {heading}, (n)" in text
    long = tidy(board)
    counts = long[long["metric"] == "dice"].set_index("group")["n"]
    for label in set(expected.values()):
        assert counts[f"attachment:{label}"] == sum(v == label for v in expected.values())
    # an OOF file written before nodules had an attachment reads as "unknown"
    old = tmp_path / "old_val_predictions.h5"
    shutil.copy(ctx.layout.all_oof_predictions()[0], old)
    with h5py.File(old, "r+") as f:
        for g in f["n"].values():
            del g.attrs["attachment"]
    assert {n.info["attachment"] for _, n in read_oof([old])} == {"unknown"}


def test_the_oof_threshold_is_chosen_on_the_networks_own_masks_not_the_fallback():
    from src.evaluation.oof import OOFNodule, choose_threshold
    from src.predict.segment import segment_at
    spacing, centre, radius = np.ones(3), np.array([10.0, 10.0, 10.0]), 5.0
    truth, _ = segment_at(np.zeros((21, 21, 21)), centre, radius, spacing, 0.5)   # the given sphere itself
    prob = np.zeros((21, 21, 21), np.float32)
    prob[8:13, 8:13, 8:13] = 0.45        # a faint, too small blob: found only at thresholds <= 0.45
    chosen = choose_threshold([(0, OOFNodule({}, prob, truth, centre, radius, spacing))])["threshold"]
    # with the fallback, every higher threshold would return the sphere (= the truth here) and win
    assert chosen <= 0.45
