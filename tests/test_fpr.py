"""False-positive reduction: candidate labels, cubes and views, the FROC's CI, and the
whole stage from OOF maps to infer.py's rescored submission."""
import dataclasses
import json
import sys

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from test_infer import _overrides, _run

import export
import infer
from src.config import DetectConfig, ModelConfig
from src.data.candidates import (
    DETECTED,
    FALSE_POSITIVE,
    HIT,
    IGNORED,
    CandidateCache,
    cube_side,
    cut_cubes,
    cut_inputs,
    match_candidates,
)
from src.data.folds import fold_ids
from src.data.geometry import Geometry
from src.data.groups import ATTACHMENT_LABELS
from src.data.luna16 import read_luna16
from src.data.preprocess import normalise
from src.errors import ConfigError
from src.evaluation.fpr_combination import WEIGHTS
from src.evaluation.froc import froc, froc_with_ci, paired_cpm_difference
from src.models.checkpoint import holdout_leaks, load_checkpoint, model_from_checkpoint
from src.models.classifier import (
    classifier_input,
    cube_offsets,
    sample_input,
    view_offsets,
)
from src.models.factory import build_model
from src.predict.fpr import combine
from src.train.fpr import mined_weights, random_affines, train_fpr
from src.train.fpr_candidates import scan_candidates, teachers_id


def _table(rows):
    return pd.DataFrame(rows, columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "probability"])


def test_candidate_labels_follow_the_luna16_rules():
    nodules = _table([("a", 0.0, 0.0, 0.0, 10.0, 0), ("a", 8.0, 0.0, 0.0, 10.0, 0), ("b", 0.0, 0.0, 0.0, 6.0, 0)])
    excluded = _table([("a", 40.0, 0.0, 0.0, 8.0, 0)])
    cands = _table([("a", 4.5, 0.0, 0.0, 0, 0.9),     # inside both nodules of a: the nearer (index 1)
                    ("a", 41.0, 0.0, 0.0, 0, 0.8),    # inside the excluded finding: ignored
                    ("b", 0.0, 3.1, 0.0, 0, 0.7),     # 3.1 mm from a 6 mm nodule: a false positive
                    ("b", 0.0, 2.9, 0.0, 0, 0.6)])    # 2.9 mm: a hit
    labels, hit = match_candidates(cands, nodules, excluded)
    assert labels.tolist() == [HIT, IGNORED, FALSE_POSITIVE, HIT]
    assert hit.tolist() == [1, -1, -1, 2]
    # the FROC counts a candidate inside two overlapping nodules for both (as the official script)
    _, cpm, _ = froc(cands.iloc[:1], nodules[nodules.seriesuid == "a"], excluded, ["a"])
    assert cpm == pytest.approx(1.0)


def test_froc_ci_brackets_the_cpm_and_collapses_for_a_perfect_detector():
    rng = np.random.default_rng(0)
    uids = [f"s{i}" for i in range(30)]
    nodules = _table([(u, 0.0, 0.0, 0.0, 8.0, 0) for u in uids])
    hits = _table([(u, 0.0, 0.0, 0.0, 0, p) for u, p in zip(uids, rng.uniform(0.2, 1.0, 30))])
    fps = _table([(u, 100.0, 0.0, 0.0, 0, p) for u in uids for p in rng.uniform(0, 1, 3)])
    result = froc_with_ci(pd.concat([hits, fps]), nodules, nodules.iloc[0:0], uids, n_boot=200)
    assert result["ci_low"] < result["cpm"] < result["ci_high"]
    assert froc(pd.concat([hits, fps]), nodules, nodules.iloc[0:0], uids)[1] == pytest.approx(result["cpm"])
    perfect = froc_with_ci(hits.assign(probability=1.0), nodules, nodules.iloc[0:0], uids, n_boot=50)
    assert perfect["cpm"] == perfect["ci_low"] == perfect["ci_high"] == 1.0
    # paired over scans: a ranking against itself differs by exactly 0; the perfect one is better
    candidates = pd.concat([hits, fps])
    same = paired_cpm_difference(candidates, candidates, nodules, nodules.iloc[0:0], uids, n_boot=100)
    assert same["difference"] == same["ci_low"] == same["ci_high"] == 0.0
    better = paired_cpm_difference(pd.concat([hits.assign(probability=1.0), fps]), candidates, nodules,
                                   nodules.iloc[0:0], uids, n_boot=100)
    assert better["difference"] == pytest.approx(1.0 - result["cpm"]) and 0 < better["ci_low"] <= better["ci_high"]


def test_cubes_are_centred_in_world_coordinates_and_views_are_orthogonal():
    geometry = Geometry.axis_aligned((-20.0, 5.0, 100.0), (0.7, 0.7, 2.0), (30, 80, 80))
    image = np.full(geometry.shape_zyx, -1000, np.int16)
    z, y, x = np.indices(image.shape)
    centre_zyx = np.array([15, 40, 30])
    image[(z == centre_zyx[0]) & (y == centre_zyx[1])] = 400          # a line along x through the centre
    world = geometry.voxel_to_world(centre_zyx)
    cube = cut_cubes(image, geometry, world[None], side=9, spacing_mm=1.0)[0]
    assert (cube[4, 4] == 400).all()                           # the line runs along the cube's x
    assert cube[4, :, 4].argmax() == 4 and (cube[4, :, 4] == 400).sum() == 1   # through its centre
    assert cube[:, 4, 4].argmax() == 4 and (cube[:, 4, 4] == 400).sum() == 1
    v = sample_input(torch.from_numpy(cube[None].astype(np.float32)), torch.eye(3, 4)[None], view_offsets(7, 3))
    assert v.shape == (1, 3, 3, 7, 7)
    c = v[0, :, 1]                      # the central slice of each view
    assert c[0, 3].max() == c[0, 3, 3]  # axial (y, x): the line is a row
    assert c[1, 3].max() == c[1, 3, 3]  # coronal (z, x): a row too
    assert c[2][3, 3] == 400 and (c[2] == 400).sum() == 1   # sagittal (z, y): a point


@pytest.mark.parametrize("offsets", [view_offsets(9, 3), cube_offsets(9)], ids=["views", "cube"])
def test_inference_inputs_are_the_training_cubes_inputs(offsets):
    rng = np.random.default_rng(1)
    geometry = Geometry((-20.0, 5.0, 100.0), (0.7, 0.8, 1.5), (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0),
                        (60, 50, 30))    # x and y axes swapped: views follow world axes, not the array's
    image = rng.integers(-1000, 400, geometry.shape_zyx).astype(np.int16)
    cfg = DetectConfig(view_size=9, view_slices=3, view_spacing_mm=1.3)
    centres = geometry.voxel_to_world(np.array([[15.0, 20.3, 30.0], [2.0, 1.0, 58.0]]))
    cubes = cut_cubes(image, geometry, centres, cube_side(cfg), cfg.view_spacing_mm)
    window = (-1000.0, 400.0)
    expected = classifier_input(cubes, window, offsets).numpy()
    cut = normalise(cut_inputs(image, geometry, centres, offsets, cfg.view_spacing_mm), window)
    assert cut.shape == expected.shape == (2, *offsets.shape[:-1])
    np.testing.assert_allclose(cut, expected, atol=1e-5)
    with pytest.raises(ConfigError, match="must be odd"):
        cube_side(DetectConfig(view_size=32))


def test_augmented_views_are_seeded_keep_the_centre_and_are_views_without_augmentation():
    cubes = torch.rand(2, 21, 21, 21)
    identity = torch.eye(3, 4).expand(2, 3, 4)
    offsets = view_offsets(15, 3)
    torch.testing.assert_close(sample_input(cubes, identity, offsets)[:, 0], cubes[:, 9:12, 3:18, 3:18])  # axial
    cubes = torch.zeros(2, 21, 21, 21)
    cubes[:, 8:13, 8:13, 8:13] = 1.0
    a = sample_input(cubes, random_affines(torch.tensor([3, 4]), 21, 1.0), offsets)
    b = sample_input(cubes, random_affines(torch.tensor([3, 4]), 21, 1.0), offsets)
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])
    assert (a[:, :, 1, 7, 7] > 0.5).all(), "a <= 1.5 mm shift keeps the centre inside the 5 mm blob"
    rotated = torch.zeros(1, 21, 21, 21)
    rotated[0, 10, 10, :] = 1.0                  # a line along x; 90 degrees about z turns it along y
    quarter = torch.tensor([[[0.0, -1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]])
    axial = sample_input(rotated, quarter, offsets)[0, 0, 1]
    assert axial[:, 7].sum() > 14 and axial[7].sum() < 2


@pytest.mark.parametrize("arch,shape", [("MultiView", (3, 3, 15, 15)), ("Cube3D", (1, 15, 15, 15))])
def test_the_classifier_is_built_by_the_model_factory_and_exports_to_onnx(tmp_path, arch, shape):
    from src.models.export import export_onnx
    model = build_model(ModelConfig(arch=arch, encoder="lcnet_050", head_prior=0.1), 3, 15).eval()
    x = classifier_input(np.random.default_rng(0).integers(-1000, 400, (2, 19, 19, 19)).astype(np.int16),
                         (-1000.0, 400.0), model.offsets)
    assert x.shape == (2, *shape)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 1)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert float(torch.sigmoid(head.bias.detach())) == pytest.approx(0.1)
    path = export_onnx(model, 3, 15, tmp_path / "fpr.onnx", {"k": 3})
    onnx_out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    np.testing.assert_allclose(onnx_out, out.numpy(), atol=1e-4, rtol=1e-4)


def test_combination_weights():
    assert combine([3.0], [0.5], 1.0)[0] == pytest.approx(1 / (1 + np.exp(-3)))
    assert combine([3.0], [0.5], 0.0)[0] == pytest.approx(0.5)
    assert np.isfinite(combine([0.0], [1.0], 0.5)[0])   # a saturated map probability stays finite


def test_candidates_carry_the_nodule_they_hit_and_a_scan_may_have_none(tiny_ctx):
    detect = dataclasses.replace(tiny_ctx.cfg.detect, candidate_source="listed")   # no map needed
    ctx = dataclasses.replace(tiny_ctx, cfg=dataclasses.replace(tiny_ctx.cfg, detect=detect))
    scan = read_luna16(ctx.cfg.paths.data)[0].load(with_image=False)
    table = scan_candidates(ctx, scan, "0", 0.5)
    by_uid = {n.nodule_uid: n for n in scan.nodules}
    hits = table[table["label"] == HIT]
    assert set(hits["nodule_uid"]) == set(by_uid)
    assert hits["attachment"].tolist() == [by_uid[u].attachment for u in hits["nodule_uid"]]
    assert hits["diameter_mm"].tolist() == [by_uid[u].diameter_mm for u in hits["nodule_uid"]]
    assert (table.loc[table["label"] != HIT, ["nodule_uid", "attachment"]] == "").all(axis=None)
    bare = scan_candidates(ctx, dataclasses.replace(scan, nodules=[]), "0", 0.5)
    assert len(bare) == len(scan.candidates_xyz) > 0 and (bare["label"] == FALSE_POSITIVE).all()
    assert (bare["nodule_uid"] == "").all() and (bare["diameter_mm"] == 0).all() and bare["texture"].isna().all()


@pytest.fixture(scope="module")
def fpr_trained(tiny_trained, cpu_runtime):
    # the tiny classifiers are barely trained: no AUC floor here (it has a test of its own)
    tiny_trained.cfg.detect.min_classifier_auc = 0.0
    result = train_fpr(tiny_trained, cpu_runtime)
    return tiny_trained, result


def test_fpr_stage_trains_on_oof_candidates_only(fpr_trained):
    ctx, result = fpr_trained
    holdout = set(ctx.folds.loc[ctx.folds["fold"] == "holdout", "seriesuid"])
    cache = CandidateCache(ctx.layout.fpr_candidates)
    table = cache.table
    assert not set(table["seriesuid"]) & holdout
    assert set(table["source"]) <= {*DETECTED, "annotation", "listed"} and table["source"].isin(DETECTED).any()
    assert (table.loc[table["source"] == "annotation", "label"] == HIT).all()
    assert set(table.loc[table["label"] == HIT, "attachment"]) <= set(ATTACHMENT_LABELS)
    # every map candidate's map came from the teacher of its own fold (never trained on it)
    teachers = teachers_id(ctx)   # the maps of these teachers' checkpoint files
    for uid in table.loc[table["source"].isin(DETECTED), "seriesuid"].unique():
        assert ctx.layout.fpr_map(uid, teachers).is_file()
    for fold in fold_ids(ctx.folds):   # a hard-negative round from the first one's best; the better one kept
        assert (ctx.layout.fpr_mining_dir(fold, 1) / "checkpoint_final.pt").is_file()
        chosen = load_checkpoint(ctx.layout.fpr_classifier(fold))["config_hash"]
        assert chosen in {load_checkpoint(d / "checkpoint_best.pt")["config_hash"]
                          for d in (ctx.layout.fpr_fold_dir(fold), ctx.layout.fpr_mining_dir(fold, 1))}
    assert not holdout_leaks(ctx.layout.fpr_dir, holdout)
    assert result["weight"] in set(WEIGHTS.tolist()) and result["weight_source"] == "chosen on OOF CPM"
    assert set(result["oof_cpm_by_weight"]) == set(WEIGHTS.tolist())
    assert result["with_fpr"]["cpm"] == pytest.approx(result["oof_cpm_by_weight"][result["weight"]])
    oof = pd.concat(pd.read_csv(p / "val_candidates.csv") for p in sorted(ctx.layout.fpr_dir.glob("fold_*")))
    assert len(oof) == len(table) and np.isfinite(oof["fpr_logit"]).all()


def test_infer_uses_the_fpr_by_default_and_not_when_asked(fpr_trained, tmp_path, monkeypatch):
    ctx, result = fpr_trained
    # the tiny student is barely trained: a low candidate threshold gives it candidates to rescore
    args = ["--input", ctx.cfg.paths.data, "--split", "holdout", *_overrides(ctx), "detect.candidate_threshold=0.01"]
    assert _run(infer, [*args[:4], "--out", str(tmp_path / "fpr"), *args[4:]], monkeypatch) == 0
    assert _run(infer, [*args[:4], "--out", str(tmp_path / "plain"), "--no-fpr", *args[4:]], monkeypatch) == 0
    with_fpr = pd.read_csv(tmp_path / "fpr" / "nodules.csv")
    plain = pd.read_csv(tmp_path / "plain" / "nodules.csv")
    assert len(with_fpr) == len(plain) > 0
    assert with_fpr["fpr_probability"].notna().all() and plain["fpr_probability"].isna().all()
    expected = combine(np.log(with_fpr["fpr_probability"] / (1 - with_fpr["fpr_probability"])),
                       with_fpr["seg_probability"], result["weight"])
    np.testing.assert_allclose(with_fpr["probability"], expected, atol=1e-3)
    np.testing.assert_allclose(plain["probability"], plain["seg_probability"])
    run = json.loads((tmp_path / "fpr" / "run.json").read_text())
    assert run["fpr"]["classifier_weight"] == result["weight"]
    submission = pd.read_csv(tmp_path / "fpr" / "submission.csv")
    np.testing.assert_allclose(np.sort(submission["probability"]), np.sort(with_fpr["probability"]), atol=1e-4)
    # every candidate the classifier saw; --no-fpr keeps the map's best of them
    every = pd.read_csv(tmp_path / "fpr" / "candidates.csv")
    assert len(every) >= len(with_fpr) and every["fpr_probability"].notna().all()
    best = every.sort_values("seg_probability", ascending=False).groupby("seriesuid").head(run["max_detections"])
    np.testing.assert_allclose(np.sort(best["seg_probability"]), np.sort(plain["seg_probability"]), atol=1e-4)


def test_fpr_classifiers_export_to_onnx(fpr_trained, monkeypatch):
    ctx, _ = fpr_trained
    monkeypatch.setattr(sys, "argv", ["export.py", "--fpr", *_overrides(ctx)])
    export.main()
    for checkpoint in ctx.layout.fpr_checkpoints():
        path = ctx.layout.onnx(checkpoint.parent)
        model = model_from_checkpoint(checkpoint)
        x = torch.rand(3, *model.offsets.shape[:-1])   # the default 3D CNN: (N, 1, S, S, S)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], model(x).numpy(), atol=1e-4)


def test_a_classifier_given_to_the_segmentation_tools_is_named_not_run(fpr_trained, monkeypatch, tmp_path):
    from src.errors import DataError
    from src.models.checkpoint import load_models
    ctx, _ = fpr_trained
    checkpoint = ctx.layout.fpr_checkpoints()[0]
    with pytest.raises(DataError, match="false-positive-reduction classifier"):
        load_models([checkpoint])
    monkeypatch.setattr(sys, "argv", ["export.py", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "c.onnx"),
                                      *_overrides(ctx)])
    with pytest.raises(DataError, match="not a segmentation network"):
        export.main()
    assert not (tmp_path / "c.onnx").exists()


def test_hard_negative_rounds_draw_the_highest_scored_negatives_more_often():
    table = pd.DataFrame({"label": [HIT, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]})
    rows = np.arange(11)                 # one positive, ten negatives
    logits = np.array([5.0, -3, -2, 4, -1, 0, -5, -4, -6, 1, -7])
    weights = mined_weights(table, rows, logits, positive_fraction=0.3, hard_fraction=0.2)
    assert weights.sum() == pytest.approx(1.0) and weights[0] == pytest.approx(0.3)
    hard = {3, 9}                        # the two negatives scored highest (logits 4 and 1)
    assert all(weights[i] > weights[j] for i in hard for j in set(range(1, 11)) - hard)
    assert weights[[3, 9]].sum() == pytest.approx(0.35 + 0.35 * 2 / 10)


def test_a_classifier_that_learned_nothing_is_flagged_and_not_used():
    from src.evaluation.fpr_combination import classifier_health
    labels = np.array([HIT, HIT, 0, 0, 0, 0, IGNORED])
    oof = pd.DataFrame(dict(label=labels, fpr_logit=[2.0, 1.5, -1.0, 0.5, -2.0, -0.3, 9.0]))
    auc, problem = classifier_health(oof, floor=0.6)
    assert auc == pytest.approx(1.0) and problem is None, "ignored findings are not scored"
    collapsed = oof.assign(fpr_logit=-2.1419)   # the demo's 0.1051 for every candidate
    assert "every validation candidate gets the same score" in classifier_health(collapsed, 0.6)[1]
    weak = oof.assign(fpr_logit=[0.1, -0.5, 0.2, 0.0, -0.4, 0.3, 0.0])
    auc, problem = classifier_health(weak, floor=0.6)
    assert auc == pytest.approx(0.25) and "OOF AUC 0.250 is below detect.min_classifier_auc 0.6" in problem
    assert classifier_health(oof[oof["label"] != HIT], 0.6) == (None, None), "nothing to judge on: no verdict"
