"""The quality benchmark: its protocol is consistent, and its statistics are right."""
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from src.bench import report
from src.bench.protocol import BUDGETS, MAIN_ARMS, SECOND_SEED_ARMS, SHIFTED_ARMS, learning_curve_arms
from src.config import PhantomConfig, load_config


def test_every_arm_is_a_valid_config_and_students_name_existing_teachers():
    for arms in (MAIN_ARMS, *(learning_curve_arms(f) for f in (0.05, 0.5))):
        names = {a.name for a in arms}
        for arm in arms:
            cfg = load_config("configs/cpu.yaml", list(arm.overrides))   # rejects unknown keys/values
            assert arm.kind in ("teachers", "student")
            assert (arm.teachers in names) == (arm.kind == "student"), arm
            assert 0 < arm.fine_fraction <= 1 and cfg.teacher.loss.coarse
    main = {a.name for a in MAIN_ARMS}
    assert set(SECOND_SEED_ARMS) <= main and set(SHIFTED_ARMS) <= main


def test_budgets_change_only_known_settings_and_shifted_sets_are_real_shifts():
    for budget in BUDGETS.values():
        load_config("configs/cpu.yaml", list(budget.overrides))
        for cond in budget.conditions():
            PhantomConfig(**cond.phantom)                                  # no unknown renderer knob
        assert len({c.phantom.get("seed") for c in budget.conditions()}) == len(budget.conditions())
    full = BUDGETS["full"]
    assert len(full.shifted) >= 4 and all(set(c.phantom) - {"seed"} for c in full.shifted)
    with pytest.raises(ValueError, match="not in MAIN_ARMS"):      # a misspelt arm trains nothing
        dataclasses.replace(full, arms=("SSL teacher",))
    with pytest.raises(ValueError, match="does not train"):        # ... or fails at the shifted sets
        dataclasses.replace(full, arms=("fine only",))
    quick = BUDGETS["quick"]   # the smoke test keeps every kind of arm: teachers, students, the unprompted one
    assert {a.kind for a in MAIN_ARMS if a.name in quick.arms} == {"teachers", "student"}
    assert "SSL teachers, trained unprompted" in quick.arms and "SSLKD + attention transfer" in quick.arms


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_more_nodules():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.1, 0.2, 20), rng.normal(0.1, 0.2, 400)
    lo_s, hi_s = report.bootstrap_ci(small)
    lo_l, hi_l = report.bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < 0.5 * (hi_s - lo_s)
    assert report.bootstrap_ci(np.full(10, 0.3)) == pytest.approx((0.3, 0.3))


def _rows(model, dices, seed=0, condition="default"):
    return pd.DataFrame(dict(condition=condition, seed=seed, model=model, nodule_uid=[f"n{i}" for i in range(len(dices))],
                             size_bin="3-10", texture="solid", diameter_mm=6.0, reader_dice=0.8, dice=dices,
                             iou=dices, hd95_mm=1.0, nsd=dices))


def test_paired_difference_averages_seeds_then_pairs_the_same_nodules():
    rows = pd.concat([_rows("a", [0.8, 0.6, 0.9], seed=0), _rows("a", [0.6, 0.6, 0.9], seed=1),
                      _rows("b", [0.5, 0.5, 0.5, 0.1])])        # b has a nodule a lacks: left out
    means = report.per_nodule_means(rows)
    assert means.loc[(means["model"] == "a") & (means["nodule_uid"] == "n0"), "dice"].item() == pytest.approx(0.7)
    diff = report.paired_difference(means, "default", "a", "b")
    assert diff["n"] == 3 and diff["mean"] == pytest.approx(np.mean([0.2, 0.1, 0.4]))
    assert diff["ci_low"] <= diff["mean"] <= diff["ci_high"]
    table = report.summary(rows, "default", ["a", "b"])
    assert table.loc[0, "dice per seed"] == f"{np.mean([0.8, 0.6, 0.9]):.3f} / {np.mean([0.6, 0.6, 0.9]):.3f}"
    assert table.loc[0, "sphere fallbacks"] == "-", "scores made before the fallback existed"
    # a seed's rows with the flag, pooled with older rows without it: counted over every seed
    flagged = rows.assign(sphere_fallback=[True, False, True, np.nan, np.nan, np.nan, False, False, False, True])
    assert report.summary(flagged, "default", ["a", "b"])["sphere fallbacks"].tolist() == [2, 1]


def test_breakdowns_follow_each_grouping_and_older_scores_are_unknown():
    rows = _rows("a", [0.9, 0.7, 0.5, 0.3])
    rows["attachment"] = ["juxta-vascular", "isolated", "juxta-vascular", "unknown"]
    table = report.breakdown(rows, "default", ["a"], "attachment")
    assert list(table.columns) == ["model", "isolated", "juxta-vascular", "unknown"], "in ATTACHMENT_LABELS order"
    assert table.iloc[0].tolist() == ["a", "0.700 (1)", "0.700 (2)", "0.300 (1)"]
    older = _rows("a", [0.9, 0.7])   # scores written before nodules had an attachment
    assert report.breakdown(older, "default", ["a"], "attachment").iloc[0].tolist() == ["a", "0.800 (2)"]


def test_detection_sensitivity_by_every_grouping():
    from src.bench.detection import groups_table
    from src.evaluation.froc import froc_with_ci
    nodules = pd.DataFrame(dict(seriesuid=["s0", "s0", "s1"], coordX=[0.0, 50.0, 0.0], coordY=0.0, coordZ=0.0,
                                diameter_mm=[5.0, 12.0, 8.0], texture=[5.0, 1.0, np.nan],
                                attachment=["isolated", "juxta-pleural", "unknown"]))
    found = pd.DataFrame(dict(seriesuid=["s0", "s1", "s1"], coordX=[0.0, 0.0, 90.0], coordY=0.0, coordZ=0.0,
                              probability=[0.9, 0.8, 0.7]))
    table = groups_table({"x": froc_with_ci(found, nodules, nodules.iloc[0:0], ["s0", "s1"], n_boot=0)})
    assert set(table["grouping"]) == {"size", "texture", "attachment"}
    by_group = table.set_index(["grouping", "group"])
    at4, recall = by_group["sens_at_4"], by_group["recall"]
    assert at4[("attachment", "isolated")] == at4[("attachment", "unknown")] == 1.0
    assert at4[("attachment", "juxta-pleural")] == at4[("texture", "ground-glass")] == at4[("size", "10-20")] == 0.0
    assert recall[("attachment", "juxta-pleural")] == 0.0 and recall[("size", "3-6")] == 1.0
    assert (by_group["nodules"].groupby(level="grouping").sum() == 3).all()


def test_lung_mask_fields_of_view_crop_where_they_say():
    from src.bench.lung_mask import fields_of_view
    from src.data.geometry import Geometry
    labels = np.zeros((20, 60, 100), np.uint8)               # z, y, x at 2 mm in-plane
    labels[2:18, 10:50, 10:40] = 3                           # the larger lung, on the image's left
    labels[4:16, 15:45, 60:85] = 4
    labels[0:6, 20:25, 48:52] = 5                            # trachea: not a lung
    boxes = fields_of_view(labels, Geometry.axis_aligned((0, 0, 0), (2.0, 2.0, 3.0), labels.shape))
    assert boxes["a"] == (slice(0, 20), slice(0, 60), slice(0, 100))
    assert boxes["b"] == (slice(0, 20), slice(0, 60), slice(15, 85))                # central 70 % in x
    assert boxes["c"] == (slice(0, 20), slice(14, 46), slice(17, 78))               # lungs' y-x box less 10 %
    z, y, x = boxes["d"]                       # inside lung 3, on past its medial edge (x 40) by 15 mm
    assert (z, y, x) == (slice(3, 17), slice(16, 44), slice(14, 48))
    assert (labels[z, y, :40][..., x.start:] == 3).all()


def test_the_report_pairs_against_half_max_by_group_pools_attached_nodules_and_shows_the_unprompted_student(tmp_path):
    from src.bench.protocol import BUDGETS, SSLKD
    from src.bench.quality import ATTACHED, write_report
    from src.bench.runner import REFERENCES, UNPROMPTED, BenchRun
    from src.runtime import Runtime
    attachment = ["isolated", "juxta-pleural", "juxta-vascular", "juxta-pleural"]
    rows = []
    for model, dices in ((SSLKD, [0.9, 0.8, 0.7, 0.6]), (SSLKD + UNPROMPTED, [0.5, 0.5, 0.5, 0.5]),
                         (REFERENCES[1], [0.9, 0.4, 0.5, 0.4])):
        rows.append(_rows(model, dices).assign(attachment=attachment, size_bin=["3-6", "6-10", "6-10", "3-6"],
                                               texture=["solid", "ground-glass", "solid", "solid"]))
    run = BenchRun(tmp_path, dataclasses.replace(BUDGETS["quick"], shifted=()), "configs/cpu.yaml",
                   Runtime(torch.device("cpu"), None))
    text = write_report(run, pd.concat(rows, ignore_index=True), pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    assert SSLKD + UNPROMPTED in text
    by_group = pd.read_csv(tmp_path / "paired_differences_by_group.csv")
    vs_half_max = by_group[(by_group["a"] == SSLKD) & (by_group["b"] == REFERENCES[1])].set_index(["grouping", "group"])
    # the three attached nodules: (0.8 - 0.4 + 0.7 - 0.5 + 0.6 - 0.4) / 3; CSV keeps 5 digits
    assert vs_half_max.loc[("attachment", ATTACHED), "n"] == 3
    assert vs_half_max.loc[("attachment", ATTACHED), "mean"] == pytest.approx(0.8 / 3, abs=1e-4)
    assert vs_half_max.loc[("size_bin", "3-6"), "mean"] == pytest.approx((0.0 + 0.2) / 2)
    assert vs_half_max.loc[("texture", "ground-glass"), "n"] == 1
    assert vs_half_max.loc[("texture", "ground-glass"), "mean"] == pytest.approx(0.4)
    assert ("size_bin", "10-20") not in vs_half_max.index            # no nodule of that size: no row


class _Recorder:
    """A BenchRun that records what it is asked to train and score, and does nothing else."""
    out = Path("unused")

    def __init__(self, budget):
        self.budget, self.trained, self.scored = budget, [], []

    def train(self, cond, arm, seed, teachers=None):
        self.trained.append((cond.name, arm.name, seed))

    def score_arm(self, cond, arm, seed, ctx, label=None, on=None):
        self.scored.append(((on or cond).name, arm.name, seed))

    def __getattr__(self, name):   # data, references, speed: nothing to record
        return lambda *args, **kwargs: None


@pytest.fixture
def recorded_quality(monkeypatch):
    from src.bench import quality
    monkeypatch.setattr(quality, "report_so_far", lambda run: "")
    monkeypatch.setattr(quality, "write_pseudo_quality", lambda *args: None)
    return quality


def test_a_run_of_some_parts_trains_only_their_arms(recorded_quality):
    """Two processes can split a run: ``--part curve`` trains the learning curve's arms only."""
    from src.bench.protocol import SSL, SSLKD
    quality = recorded_quality
    run = _Recorder(dataclasses.replace(BUDGETS["full"], learning_curve=(0.5, 0.1)))
    quality.run_quality(run, ("curve",))
    assert run.trained == [("default", a.name, 0) for f in (0.5, 0.1) for a in learning_curve_arms(f)]
    run.trained.clear()
    quality.run_quality(run, ("seeds", "shifted"))
    shifted = [(c.name, a, 0) for c in run.budget.shifted for a in SHIFTED_ARMS]
    scarcest = [("default", a.name, 1) for a in learning_curve_arms(0.1)]   # the other seed: 10 % only
    assert run.trained == shifted + [("default", a, 1) for a in SECOND_SEED_ARMS] + scarcest
    assert SECOND_SEED_ARMS[:2] == (SSL, SSLKD)   # a second seed cut short still has the main comparison


def test_the_second_hold_out_batch_scores_new_patients_only_and_pools_with_the_default_set(tmp_path):
    from src.bench.protocol import DEFAULT, SECOND_BATCH, SSLKD
    from src.bench.quality import pool_hold_out_batches, write_report
    from src.bench.runner import REFERENCES, BenchRun
    from src.runtime import Runtime
    run = BenchRun(tmp_path, dataclasses.replace(BUDGETS["quick"], shifted=()), "configs/cpu.yaml",
                   Runtime(torch.device("cpu"), None))
    for cond, patients in ((DEFAULT, ["p1", "p2"]), (SECOND_BATCH, ["p2", "p3", "p4"])):
        folder = run.data_dir(cond) / "luna16"
        folder.mkdir(parents=True)
        pd.DataFrame(dict(seriesuid=[f"{cond.phantom['seed']}.{p}" for p in patients],
                          patient_id=patients)).to_csv(folder / "scans.csv", index=False)
    assert run.new_patients_scans(SECOND_BATCH) == {"21.p3", "21.p4"}   # p2 is in the default set

    second = [_rows(m, [0.7, 0.9], condition=SECOND_BATCH.name).assign(nodule_uid=["m0", "m1"])
              for m in (SSLKD, REFERENCES[1])]
    rows = pd.concat([_rows(SSLKD, [0.8, 0.6]), _rows(REFERENCES[1], [0.5, 0.5]), *second], ignore_index=True)
    pooled = pool_hold_out_batches(rows)
    assert set(pooled["condition"]) == {DEFAULT.name}
    assert pooled.groupby("nodule_uid")["hold_out_batch"].first().to_dict() == {"n0": 1, "n1": 1, "m0": 2, "m1": 2}
    text = write_report(run, rows, pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    assert "## Default set: 4 hold-out nodules" in text
    assert f"| {SSLKD} | 0.700 (2) | 0.800 (2) |" in text   # the by-batch table


def test_every_default_set_arm_is_also_scored_on_the_second_batch(recorded_quality):
    from src.bench.protocol import DEFAULT, SECOND_BATCH
    quality = recorded_quality
    run = _Recorder(dataclasses.replace(BUDGETS["full"], learning_curve=(0.1,), shifted=()))
    quality.run_quality(run, ("curve",))
    arms = [a.name for a in learning_curve_arms(0.1)]
    assert run.scored == [(c.name, a, 0) for a in arms for c in (DEFAULT, SECOND_BATCH)]
    run.scored.clear()
    run.budget = dataclasses.replace(run.budget, second_batch_scans=0)
    quality.run_quality(run, ("curve",))
    assert run.scored == [(DEFAULT.name, a, 0) for a in arms]


def test_the_learning_curve_runs_by_fine_fraction_for_each_family(tmp_path):
    from src.bench.protocol import SSL, SSLKD
    from src.bench.quality import write_report
    from src.bench.runner import REFERENCES, BenchRun
    from src.runtime import Runtime
    run = BenchRun(tmp_path, dataclasses.replace(BUDGETS["quick"], shifted=(), learning_curve=(0.5, 0.1)),
                   "configs/cpu.yaml", Runtime(torch.device("cpu"), None))
    models = {f"{family} @ {pct}": dice for family in ("fine only", SSL, SSLKD)
              for pct, dice in (("10%", 0.6), ("50%", 0.8))}
    models.update({"fine only": 0.7, SSL: 0.75, "full supervision": 0.9, REFERENCES[1]: 0.5})
    rows = pd.concat([_rows(m, [d, d]) for m, d in models.items()], ignore_index=True)
    write_report(run, rows, pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    curve = pd.read_csv(tmp_path / "learning_curve.csv")
    assert list(curve["fraction"]) == sorted(curve["fraction"])
    ssl = curve[curve["family"] == SSL]
    assert list(ssl["model"]) == [f"{SSL} @ 10%", SSL, f"{SSL} @ 50%"]
    assert list(ssl["dice"]) == pytest.approx([0.6, 0.75, 0.8])
    assert curve.loc[curve["fraction"] == 1.0, "model"].tolist() == ["full supervision"]
    paired = pd.read_csv(tmp_path / "paired_differences.csv")
    assert ((paired["a"] == f"{SSL} @ 10%") & (paired["b"] == "fine only @ 10%")).any()


def test_a_report_before_any_arm_of_the_curve_is_scored_says_so(tmp_path):
    """--report-only on a full run in progress: the references are scored, no curve arm yet."""
    from src.bench.quality import write_report
    from src.bench.runner import REFERENCES, BenchRun
    from src.runtime import Runtime
    run = BenchRun(tmp_path, dataclasses.replace(BUDGETS["quick"], shifted=(), learning_curve=(0.5, 0.1)),
                   "configs/cpu.yaml", Runtime(torch.device("cpu"), None))
    text = write_report(run, _rows(REFERENCES[1], [0.5, 0.6]), pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    assert "No arm of the curve is scored yet." in text and not (tmp_path / "learning_curve.csv").exists()


def test_scores_made_before_the_sphere_fallback_are_scored_again(tmp_path):
    from src.bench.protocol import DEFAULT
    from src.bench.runner import BenchRun
    from src.runtime import Runtime
    run = BenchRun(tmp_path, BUDGETS["quick"], "configs/cpu.yaml", Runtime(torch.device("cpu"), None))
    path = run.scores_path(DEFAULT, 0, "an arm")
    path.parent.mkdir(parents=True)
    _rows("an arm", [0.5, 0.7]).to_csv(path, index=False)             # an older rule's scores
    assert run.scored(DEFAULT, 0, "an arm") is None
    _rows("an arm", [0.5, 0.7]).assign(sphere_fallback=[False, True]).to_csv(path, index=False)
    assert run.scored(DEFAULT, 0, "an arm")["sphere_fallback"].tolist() == [False, True]


def test_the_report_leaves_out_older_scores_and_names_each_ensembles_pseudo_labels(tmp_path):
    """Scores made under the older rule are not pooled with the current ones; pseudo-label
    quality is kept per teacher arm, so a later learning-curve student cannot pass its
    ensemble's labels off as the main one's."""
    from src.bench.protocol import DEFAULT, SSL, SSLKD
    from src.bench.quality import report_so_far
    from src.bench.runner import REFERENCES, BenchRun
    from src.runtime import Runtime
    run = BenchRun(tmp_path, dataclasses.replace(BUDGETS["quick"], shifted=()), "configs/cpu.yaml",
                   Runtime(torch.device("cpu"), None))
    for name, fallback in ((SSLKD, True), (REFERENCES[1], True), ("SSLKD student @ 10%", None)):
        path = run.scores_path(DEFAULT, 0, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = _rows(name, [0.6, 0.8]).assign(attachment="isolated")
        (table if fallback is None else table.assign(sphere_fallback=False)).to_csv(path, index=False)
    for teachers, n in ((SSL, 3), (f"{SSL} @ 10%", 5)):
        path = tmp_path / "pseudo" / "default" / "seed0" / f"{teachers}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(dict(condition="default", seed=0, teachers=teachers, dice_3d=[0.7] * n,
                          sphere_dice=[0.6] * n)).to_csv(path, index=False)
    text = report_so_far(run)
    assert "@ 10%" not in pd.read_csv(tmp_path / "per_nodule.csv")["model"].str.cat()
    pseudo = text.split("## Pseudo-labels")[1].split("##")[0]
    assert f"| default | 0 | {SSL} | 3 | 0.700 | 0.600 |" in pseudo
    assert f"| default | 0 | {SSL} @ 10% | 5 | 0.700 | 0.600 |" in pseudo


def test_a_folder_made_under_another_recipe_is_refused(tmp_path):
    """A rerun skips every model and score already in the folder: under another recipe it
    would report old models as new ones. Worker counts change no result and pass."""
    from src.bench.runner import BenchRun
    from src.errors import DataError
    from src.runtime import Runtime
    quick = BUDGETS["quick"]

    def claim(*overrides):
        BenchRun(tmp_path, dataclasses.replace(quick, overrides=(*quick.overrides, *overrides)), "configs/cpu.yaml",
                 Runtime(torch.device("cpu"), None)).claim_folder()

    claim()
    claim()
    claim("teacher.num_workers=3", "cache.workers=1")
    with pytest.raises(DataError, match="teacher.epochs"):
        claim("teacher.epochs=99")
    # a folder claimed before the recipe named its generator holds the v2 renderer's data
    recipe = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    del recipe["generator"]
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(DataError, match="generator: 'nodule-kd phantom v2' -> 'nodule-kd phantom v3'"):
        claim()


def test_default_set_models_on_a_shifted_set_see_only_patients_they_never_trained_on(tmp_path, monkeypatch):
    """The shifted sets draw from the same LIDC patients as the default set: a default-set
    model is scored there only on patients it neither trained nor validated on."""
    from types import SimpleNamespace

    from src.bench.protocol import DEFAULT, MAIN_ARMS
    from src.bench.runner import BenchRun
    from src.runtime import Runtime
    run = BenchRun(tmp_path, BUDGETS["full"], "configs/cpu.yaml", Runtime(torch.device("cpu"), None))
    shifted, arm = run.budget.shifted[0], MAIN_ARMS[0]
    run.data_dir(DEFAULT).mkdir(parents=True)
    pd.DataFrame(dict(seriesuid=["d1", "d2"], patient_id=["p1", "p2"], fold=["0", "holdout"])).to_csv(
        run.data_dir(DEFAULT) / "folds_fine0.2.csv", index=False)   # what folds_path(DEFAULT, 0.2) reads
    (run.data_dir(shifted) / "luna16").mkdir(parents=True)
    pd.DataFrame(dict(seriesuid=["s1", "s2", "s3"], patient_id=["p1", "p2", "p3"])).to_csv(
        run.data_dir(shifted) / "luna16" / "scans.csv", index=False)
    monkeypatch.setattr(run, "cases", lambda cond, split="holdout": [SimpleNamespace(seriesuid=u) for u in ("s1", "s2", "s3")])
    monkeypatch.setattr(run, "segmenter", lambda ctx, arm: (None, 0.5, SimpleNamespace(prompted=False)))
    given = {}
    monkeypatch.setattr(run, "score", lambda cond, seed, name, segmenters, cases=None: given.setdefault(name, cases))
    run.score_arm(DEFAULT, arm, 0, None, label="on shifted", on=shifted)
    assert [c.seriesuid for c in given["on shifted"]] == ["s2", "s3"]   # p1 trained the default set's models
    run.score_arm(shifted, arm, 0, None)
    assert given[arm.name] is None   # a shifted set's own models: its whole hold-out
