"""infer.py, evaluate.py, scoring and ONNX export."""
import json
import sys

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from conftest import TINY_OVERRIDES

import evaluate
import infer
from src.cli import run
from src.config import CacheConfig, DetectConfig
from src.data.candidates import excluded_table, nodule_table
from src.data.classical import BINARY_LEVEL, HalfMaxSegmenter
from src.data.geometry import Geometry
from src.data.io import read_image, write_image
from src.data.luna16 import read_luna16
from src.data.scan import Scan
from src.evaluation.froc import froc
from src.evaluation.holdout import score_holdout
from src.evaluation.predictions import score_mode1
from src.models.checkpoint import model_from_checkpoint
from src.models.export import export_onnx
from src.predict.detect import candidates
from src.predict.experiment import TrainedExperiment
from src.predict.segment import ModelVolume
from src.runtime import setup_runtime


def _run(module, argv, monkeypatch) -> int:
    """A script as the shell runs it (through src.cli.run): -> its exit code."""
    monkeypatch.setattr(sys, "argv", [module.__name__ + ".py", *argv])
    with pytest.raises(SystemExit) as stop:
        run(module.main)
    return stop.value.code


def _overrides(ctx):
    p = ctx.cfg.paths
    return ["--set", f"paths.outputs={p.outputs}", f"paths.experiment={p.experiment}", f"paths.folds={p.folds}",
            f"paths.data={p.data}", f"paths.cache={p.cache}", "device=cpu"]


def test_mode1_outputs_have_input_geometry_and_match_the_leaderboard(tiny_trained, tmp_path, monkeypatch):
    ctx = tiny_trained
    data = ctx.cfg.paths.data
    out = tmp_path / "coords"
    rc = _run(infer, ["--input", data, "--coords", f"{data}/annotations.csv", "--split", "holdout",
                      "--out", str(out), "--qa", *_overrides(ctx)], monkeypatch)
    assert rc == 0
    assert json.loads((out / "run.json").read_text())["prompted"], "the student was told each nodule's sphere"
    records = {r.seriesuid: r for r in read_luna16(data)}
    table = pd.read_csv(out / "nodules.csv", dtype={"seriesuid": str})
    holdout = set(ctx.folds.loc[ctx.folds["fold"] == "holdout", "seriesuid"])
    assert set(table["seriesuid"]) == holdout
    for uid in holdout:
        labels, geo = read_image(out / f"{uid}.nii.gz")
        scan = records[uid].load()
        assert geo.same_grid(scan.geometry, tol=1e-4), "masks overlay the input scan"
        assert set(np.unique(labels)) <= set(range(len(scan.nodules) + 1))
    scores = score_mode1(out, [records[u] for u in holdout])
    # the hold-out leaderboard scores the student through the same path, loaded the same way
    # (one experiment API, one threshold): identical numbers
    student = TrainedExperiment(ctx.layout, ctx.cfg).models("student", setup_runtime("cpu"), fpr=False)
    board = score_holdout(ctx, {"student": (student.segmenter(ctx.cfg.infer), student.threshold)})
    merged = scores.merge(board, on="nodule_uid", suffixes=("_infer", "_board"))
    assert len(merged) == len(board) > 0
    np.testing.assert_allclose(merged["dice_infer"], merged["dice_board"], atol=1e-9)


def test_the_experiment_owns_the_threshold_not_a_stale_stamp(tiny_trained, tmp_path, capsys):
    """A student stamped before cv.py chose the OOF threshold is applied at the experiment's
    choice, with a note; loaded on its own (--checkpoint), at its stamp."""
    from dataclasses import replace

    from src.layout import ExperimentLayout
    from src.predict.experiment import checkpoint_models
    ctx, rt = tiny_trained, setup_runtime("cpu")
    layout = ExperimentLayout(tmp_path / "exp")
    layout.student_checkpoint().parent.mkdir(parents=True)
    ckpt = torch.load(ctx.layout.student_checkpoint(), weights_only=True)
    torch.save({**ckpt, "threshold": 0.5}, layout.student_checkpoint())
    layout.write_postprocessing({"threshold": 0.3})
    models = TrainedExperiment(layout, ctx.cfg).models("student", rt)
    assert models.threshold == 0.3 and "postprocessing.json" in models.threshold_source
    assert "stamped with threshold 0.5" in capsys.readouterr().err
    assert checkpoint_models([layout.student_checkpoint()], ctx.cfg, rt).threshold == 0.5
    cfg = replace(ctx.cfg, infer=replace(ctx.cfg.infer, threshold_from_oof=False))
    assert TrainedExperiment(layout, cfg).models("student", rt).threshold == cfg.infer.threshold


def test_half_max_mode_uses_no_network_and_matches_the_leaderboard(tiny_trained, tmp_path, monkeypatch, capsys):
    ctx = tiny_trained
    data = ctx.cfg.paths.data
    out = tmp_path / "half-max"
    # the tiny model space, and no experiment at all: a network would not be found
    argv = ["--input", data, "--coords", f"{data}/annotations.csv", "--split", "holdout", "--model", "half-max",
            "--out", str(out), "--config", "", *_overrides(ctx), *TINY_OVERRIDES, "paths.experiment=none-trained"]
    assert _run(infer, argv, monkeypatch) == 0
    assert json.loads((out / "run.json").read_text())["checkpoints"] == []
    holdout = set(ctx.folds.loc[ctx.folds["fold"] == "holdout", "seriesuid"])
    scores = score_mode1(out, [r for r in read_luna16(data) if r.seriesuid in holdout])
    board = score_holdout(ctx, {"half-max": (HalfMaxSegmenter(ctx.k, ctx.cfg.infer.prior_margin_mm), BINARY_LEVEL)})
    merged = scores.merge(board, on="nodule_uid", suffixes=("_infer", "_board"))
    assert len(merged) == len(board) > 0 and merged["dice_infer"].gt(0).all()
    np.testing.assert_allclose(merged["dice_infer"], merged["dice_board"], atol=1e-9)

    capsys.readouterr()
    rc = _run(infer, ["--input", data, "--model", "half-max", "--out", str(tmp_path / "scan")], monkeypatch)
    assert rc == 2 and "needs --coords" in capsys.readouterr().err   # whole scans need a network
    assert not (tmp_path / "scan").exists()


def test_whole_scan_mode_writes_submission_and_scores(tiny_trained, tmp_path, monkeypatch, capsys):
    ctx = tiny_trained
    out = tmp_path / "scan"
    assert _run(infer, ["--input", ctx.cfg.paths.data, "--split", "holdout", "--out", str(out), "--save-prob",
                        *_overrides(ctx)], monkeypatch) == 0
    sub = pd.read_csv(out / "submission.csv")
    assert list(sub.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "probability"]
    uid = sub["seriesuid"].iloc[0] if len(sub) else ctx.folds.loc[ctx.folds["fold"] == "holdout", "seriesuid"].iloc[0]
    prob, geo = read_image(out / f"{uid}_prob.nii.gz")
    assert prob.min() >= 0 and prob.max() <= 1
    capsys.readouterr()
    _run(evaluate, ["--pred", str(out), "--split", "holdout", *_overrides(ctx)], monkeypatch)
    printed = capsys.readouterr().out
    holdout = sorted(ctx.folds.loc[ctx.folds["fold"] == "holdout", "seriesuid"])
    scans = [r.load(with_image=False) for r in read_luna16(ctx.cfg.paths.data) if r.seriesuid in set(holdout)]
    _, cpm, _ = froc(pd.read_csv(out / "submission.csv", dtype={"seriesuid": str}), nodule_table(scans),
                     excluded_table(scans), holdout)
    assert f"CPM final: {cpm:.4f}" in printed and f"over {len(holdout)} scans" in printed
    curve = pd.read_csv(out / "froc.csv")
    assert curve["sensitivity"].is_monotonic_increasing and (out / "froc.png").is_file()


@pytest.mark.parametrize("mode", ["whole scan", "coords"])
def test_an_interrupted_run_resumes_to_the_same_outputs(tiny_trained, tmp_path, monkeypatch, capsys, mode):
    """A long run stopped after its first scan: the rerun predicts only the others, and
    writes what an uninterrupted run writes."""
    from src.predict import run as run_module
    ctx = tiny_trained
    data = ctx.cfg.paths.data
    coords = ["--coords", f"{data}/annotations.csv"] if mode == "coords" else []
    args = ["--input", data, *coords, "--split", "holdout", *_overrides(ctx)]
    assert _run(infer, [*args, "--out", str(tmp_path / "whole")], monkeypatch) == 0
    real, predicted, stop = run_module.run_scan, [], [2]

    def counted(record, *rest):   # the first run is stopped (Ctrl-C) at its second scan
        predicted.append(record.seriesuid)
        if len(predicted) in stop:
            raise KeyboardInterrupt
        return real(record, *rest)

    monkeypatch.setattr(run_module, "run_scan", counted)
    out = tmp_path / "resumed"
    assert _run(infer, [*args, "--out", str(out)], monkeypatch) == 130 and not (out / "nodules.csv").exists()
    predicted.clear()
    stop.clear()
    capsys.readouterr()
    assert _run(infer, [*args, "--out", str(out)], monkeypatch) == 0
    n_scans = len(ctx.folds[ctx.folds["fold"] == "holdout"])
    assert len(predicted) == n_scans - 1 and f"resumed: 1 of {n_scans} scan(s)" in capsys.readouterr().err
    tables = ("nodules.csv",) if coords else ("nodules.csv", "submission.csv", "candidates.csv")
    for name in tables:
        assert (out / name).read_text() == (tmp_path / "whole" / name).read_text(), name
    assert not any(out.glob(".infer.parts-*")), "nothing left to resume once every scan is done"


def test_bad_inputs_fail_per_scan_and_the_run_continues(tiny_trained, tmp_path, monkeypatch, capsys):
    ctx = tiny_trained
    good = next(iter(read_luna16(ctx.cfg.paths.data)))
    write_image(*read_image(good.image_path), tmp_path / "good.mhd")
    (tmp_path / "broken.nii.gz").write_bytes(b"garbage")
    (tmp_path / "empty").mkdir()
    coords = pd.DataFrame([dict(seriesuid="good", coordX=9999.0, coordY=0.0, coordZ=0.0, diameter_mm=5.0)])
    coords.to_csv(tmp_path / "coords.csv", index=False)
    rc = _run(infer, ["--input", str(tmp_path / "broken.nii.gz"), str(tmp_path / "empty"), str(tmp_path / "good.mhd"),
                      "--out", str(tmp_path / "out"), *_overrides(ctx)], monkeypatch)
    out, err = capsys.readouterr()
    assert rc == 2, "errors exit 2, after the other scans were done"
    assert "broken.nii.gz: cannot read image" in err and "empty: folder is empty" in err
    assert err.strip().splitlines()[-1].startswith("error: 2 of 3 inputs failed (listed above; first: ")
    assert "nan" not in out and "s/scan" in out
    assert (tmp_path / "out" / "good.nii.gz").is_file(), "the readable scan was still processed"
    assert json.loads((tmp_path / "out" / "run.json").read_text())["seriesuids"] == ["good"]
    # the finished scan is kept for the rerun once the broken inputs are fixed
    assert "a rerun predicts only the failed ones" in err and any((tmp_path / "out").glob(".infer.parts-*/good-*.csv"))
    rc = _run(infer, ["--input", str(tmp_path / "good.mhd"), "--coords", str(tmp_path / "coords.csv"),
                      "--out", str(tmp_path / "out2"), *_overrides(ctx)], monkeypatch)
    out, err = capsys.readouterr()
    assert rc == 2 and "outside the volume" in err and "no outputs written" in err
    assert not (tmp_path / "out2" / "nodules.csv").exists() and not (tmp_path / "out2" / "run.json").exists()


def test_whole_scan_candidates_must_lie_in_the_lungs():
    geometry = Geometry.axis_aligned((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (20, 40, 40))
    lung = np.zeros((20, 40, 40), bool)
    lung[:, :, :20] = True
    scan = Scan(None, np.zeros(lung.shape, np.int16), geometry, [], None, lung, None,
                np.zeros((0, 4)), np.zeros((0, 3)))
    prob = np.zeros(lung.shape, np.float32)
    prob[8:13, 8:13, 8:13] = 0.9     # in the lungs
    prob[8:13, 8:13, 17:22] = 0.8    # straddles the boundary: 3 of 5 columns inside
    prob[8:13, 28:33, 28:33] = 0.95  # chest wall: outside
    mv = ModelVolume(scan.image, geometry, geometry, CacheConfig(), scan=scan)
    cfg = DetectConfig(candidate_threshold=0.5, min_component_mm3=10.0, min_lung_fraction=0.5)
    labels, _, table = candidates(mv, prob, cfg, 0.5)
    assert table["probability"].tolist() == table["seg_probability"].tolist() == pytest.approx([0.9, 0.8])
    assert table["coordX"].tolist() == pytest.approx([10.0, 19.0])
    assert labels[10, 30, 30] == 0 and labels[10, 10, 10] == 1
    cfg.min_lung_fraction = 0.0
    assert len(candidates(mv, prob, cfg, 0.5)[2]) == 3


def test_froc_and_cpm():
    ann = pd.DataFrame([dict(seriesuid="a", coordX=0.0, coordY=0.0, coordZ=0.0, diameter_mm=10.0),
                        dict(seriesuid="b", coordX=50.0, coordY=0.0, coordZ=0.0, diameter_mm=6.0)])
    excluded = pd.DataFrame([dict(seriesuid="a", coordX=30.0, coordY=0.0, coordZ=0.0, diameter_mm=8.0)])
    perfect = pd.DataFrame([dict(seriesuid="a", coordX=1.0, coordY=1.0, coordZ=0.0, probability=0.9),
                            dict(seriesuid="b", coordX=50.0, coordY=2.0, coordZ=0.0, probability=0.8),
                            dict(seriesuid="a", coordX=31.0, coordY=0.0, coordZ=0.0, probability=0.99)])
    _, cpm, _ = froc(perfect, ann, excluded, ["a", "b"])
    assert cpm == pytest.approx(1.0), "hits found, excluded finding ignored"
    noisy = pd.concat([perfect, pd.DataFrame([dict(seriesuid="a", coordX=-80.0, coordY=0.0, coordZ=0.0,
                                                  probability=0.95)] * 1)])
    curve, cpm, points = froc(noisy, ann, excluded, ["a", "b"])
    # one FP above both hits: at 1/8 and 1/4 FP/scan nothing is found, from 1/2 on both are
    assert points["sensitivity"].tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert cpm == pytest.approx(5 / 7)
    # a hit lies within the radius: 2.9 mm from a 6 mm nodule is a hit, 4 mm a false positive
    edge = pd.DataFrame([dict(seriesuid="a", coordX=0.0, coordY=0.0, coordZ=0.0, probability=0.9),
                         dict(seriesuid="b", coordX=52.9, coordY=0.0, coordZ=0.0, probability=0.8)])
    assert froc(edge, ann, excluded, ["a", "b"])[1] == pytest.approx(1.0)
    miss = edge.assign(coordX=[0.0, 54.0])
    _, cpm, points = froc(miss, ann, excluded, ["a", "b"])
    # the FP (0.8) ranks below the hit on a (0.9): half the nodules found at every rate
    assert points["sensitivity"].tolist() == [0.5] * 7 and cpm == pytest.approx(0.5)
    # an excluded finding listed without a diameter (LUNA16's -1) reaches 5 mm, as in the
    # official script: a candidate 4 mm from it is ignored, not a false positive
    no_diameter = pd.DataFrame([dict(seriesuid="a", coordX=30.0, coordY=0.0, coordZ=0.0, diameter_mm=float("nan"))])
    near = perfect.assign(coordX=[1.0, 50.0, 34.0])
    assert froc(near, ann, no_diameter, ["a", "b"])[1] == pytest.approx(1.0)


def test_onnx_matches_pytorch(tiny_trained, tmp_path):
    model = model_from_checkpoint(tiny_trained.layout.student_checkpoint())
    assert model.prompted   # the input carries the prompt channel after the k slices
    path = export_onnx(model, tiny_trained.k, tiny_trained.patch_size, tmp_path / "s.onnx", {"k": tiny_trained.k})
    x = np.random.default_rng(0).random((3, tiny_trained.k + 1, 64, 96), dtype=np.float32)
    onnx_out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    with torch.inference_mode():
        torch_out = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-4, rtol=1e-4)  # fp32 kernels differ in summation order


def test_a_fixed_size_encoder_exports_with_fixed_height_and_width(tmp_path):
    """CoAtNet's attention is built for one input size: the graph and its metadata say so,
    instead of promising any multiple of 32 and failing in the consumer's runtime."""
    import onnx
    from src.config import ModelConfig
    from src.models.export import onnx_metadata
    from src.models.factory import build_model
    model = build_model(ModelConfig(encoder="tu-coatnet_nano_rw_224"), 3, 64)
    path = export_onnx(model, 3, 64, tmp_path / "c.onnx", {})
    dims = [d.dim_value or d.dim_param for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 64, 64]
    meta = onnx_metadata(CacheConfig(patch_size=64), 0.5, "test", path, fixed_size=True)
    assert "H = W = 64" in meta["input"]


def test_candidate_masks_in_the_box_above_threshold_equal_the_whole_volume_labelling():
    """candidate_masks labels components only inside the box of the voxels above threshold
    (memory): the same labels as labelling the whole volume, shared components included."""
    import cc3d
    from src.predict.detect import candidate_masks
    rng = np.random.default_rng(3)
    geometry = Geometry.axis_aligned((0.0, 0.0, 0.0), (0.8, 0.8, 1.5), (60, 64, 30))
    prob = np.zeros(geometry.shape_zyx, np.float32)
    for z, y, x in rng.integers([3, 8, 8], [27, 56, 52], size=(8, 3)):
        prob[z - 2:z + 3, y - 3:y + 4, x - 3:x + 4] = rng.uniform(0.4, 1.0)
    at = np.argwhere(prob > 0)[rng.choice(int((prob > 0).sum()), 6, replace=False)]
    at = np.vstack([at, [[0, 0, 0]]])   # one candidate outside every component
    table = pd.DataFrame(geometry.voxel_to_world(at.astype(float)), columns=["coordX", "coordY", "coordZ"])
    table["nodule_id"] = np.arange(1, len(table) + 1)
    labels = candidate_masks(prob, geometry, table, 0.5)
    whole = cc3d.connected_components(prob >= 0.5, connectivity=26)
    expected = np.zeros_like(labels)
    for nid, c in zip(table["nodule_id"][::-1], whole[tuple(at.T)][::-1]):
        if c:
            expected[whole == c] = nid
    assert labels.any()
    np.testing.assert_array_equal(labels, expected)


def test_touching_given_nodules_split_their_blob_by_the_nearer_centre():
    """One blob found for two clicked nodules: each voxel goes to the nearer given centre,
    counted in radii, whichever row came first, and each keeps its own centre."""
    from src.predict.run import claim
    from src.predict.segment import Segmented
    shape = (20, 20, 40)
    zyx = np.indices(shape).transpose(1, 2, 3, 0)
    box = tuple(slice(0, n) for n in shape)
    big, small = np.array([10.0, 10.0, 12.0]), np.array([10.0, 10.0, 24.0])
    blob = (np.linalg.norm(zyx - big, axis=-1) <= 7) | (np.linalg.norm(zyx - small, axis=-1) <= 4)
    segs = [Segmented(box, blob.astype(np.float32), c, r, blob.copy()) for c, r in ((big, 6.0), (small, 3.0))]
    for order in ((0, 1), (1, 0)):
        labels, done = np.zeros(shape, np.uint16), []
        for nid, i in enumerate(order, start=1):
            claim(labels, segs[i], nid, done, (1.0, 1.0, 1.0))
            done.append(segs[i])
        of = {i: nid for nid, i in enumerate(order, start=1)}
        assert labels[10, 10, 12] == of[0] and labels[10, 10, 24] == of[1]
        assert labels[10, 10, 19] == of[0]     # 7 / 6 radii from the big one, 5 / 3 from the small
        assert labels[10, 10, 21] == of[1]     # 9 / 6 against 3 / 3
        assert ((labels > 0) == blob).all()
