"""The detection benchmark: whole-scan CPM with and without false-positive reduction.

On the quality benchmark's default set (240 scans since the v2 dataset; half held out) with its SSL teachers
and SSLKD student (trained there, or here if missing):

1. ``train.py --stage fpr``'s own code on that experiment with OOF candidates: each fold
   teacher's map on its validation scans, candidate cubes, one classifier per fold, the
   combination weight chosen on OOF CPM. -> the OOF FROC (every non-hold-out scan scored by
   models that never trained on it), with and without FPR.
2. The hold-out scans, as ``infer.py`` runs them: the student's whole-scan map, its
   candidates, rescored by the fold classifiers. -> the hold-out FROC with and without FPR.

CPMs carry 95 % bootstrap CIs over scans; the sensitivity by size, texture and attachment
is given at 1 and 4 false positives per scan. Everything lands in ``outputs/bench/detection/``.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from src.bench.protocol import DEFAULT, MAIN_ARMS, SSL, SSLKD
from src.bench.runner import BenchRun
from src.data.candidates import excluded_table, nodule_table
from src.data.folds import holdout_uids
from src.data.groups import GROUPS
from src.data.manifest import read_dataset
from src.evaluation.froc import FROC_FPS, froc_table, froc_with_ci, plot_froc, sensitivity_by_group
from src.models.checkpoint import model_from_checkpoint
from src.predict.detect import candidates, read_map, write_maps
from src.predict.fpr import CandidateScorer, combine
from src.predict.predictor import Predictor
from src.predict.segment import to_model_volume
from src.train.fpr import train_fpr
from src.utils import atomic_to_csv, atomic_write_text, progress

# The FPR stage as the bench runs it: OOF candidates (the point of the benchmark), and a
# longer schedule than the demo's for ~50 x more candidates.
DETECT_OVERRIDES = dict(candidate_source="oof")
FPR_SCHEDULE = dict(epochs=10, steps_per_epoch=60, batch_size=64)


def holdout_detections(run: BenchRun, ctx_teachers, ctx_student, out: Path) -> pd.DataFrame:
    """The student's whole-scan candidates on every hold-out scan, rescored by the FPR."""
    cfg = ctx_student.cfg
    checkpoint = ctx_student.layout.student_checkpoint()
    student = model_from_checkpoint(checkpoint)
    threshold = float(student.checkpoint_meta.get("threshold", cfg.infer.threshold))
    holdout = holdout_uids(ctx_student.folds)
    records = [r for r in read_dataset(cfg.paths) if r.seriesuid in holdout]
    maps = out / "holdout_maps"
    write_maps(records, Predictor([student], run.rt, ctx_student.window, batch_size=cfg.infer.batch_size),
               ctx_student.cache.config, cfg.infer.batch_size, lambda uid: maps / f"{uid}.npz",
               desc="hold-out maps (student)")
    layout = ctx_teachers.layout
    scorer = CandidateScorer.load(layout.fpr_checkpoints(), layout.fpr_combination, run.rt)
    tables = []
    for record in progress(records, desc="hold-out candidates + FPR"):
        scan = record.load()
        mv = to_model_volume(scan, ctx_student.cache.config)
        _, _, table = candidates(mv, read_map(maps / f"{record.seriesuid}.npz"), ctx_teachers.cfg.detect, threshold)
        tables.append(scorer.rescore(scan, table).assign(seriesuid=record.seriesuid))
    return pd.concat(tables, ignore_index=True)


def summaries(detections: pd.DataFrame, scans: list, label: str) -> dict[str, dict]:
    uids = sorted(s.seriesuid for s in scans)
    truth, excluded = nodule_table(scans), excluded_table(scans)
    out = {}
    for name, column in (("without FPR", "seg_probability"), ("with FPR", "probability")):
        result = froc_with_ci(detections.assign(probability=detections[column]), truth, excluded, uids)
        result["recall"] = float(np.isfinite(result["per_nodule"]["best_probability"]).mean())
        result["candidates_per_scan"] = len(detections) / max(len(uids), 1)
        out[f"{label}, {name}"] = result
    return out


def groups_table(results: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for name, r in results.items():
        nodules = r["per_nodule"]
        for grouping in GROUPS.values():
            values = nodules[grouping.source].map(grouping.classify)
            rows.append(sensitivity_by_group(r, values).assign(ranking=name, grouping=grouping.tag))
    return pd.concat(rows, ignore_index=True)


def run_detection(run: BenchRun, out: Path) -> str:
    arms = {a.name: a for a in MAIN_ARMS}
    run.prepare(DEFAULT)
    ctx_t = run.train(DEFAULT, arms[SSL], 0)
    ctx_s = run.train(DEFAULT, arms[SSLKD], 0, teachers=arms[SSL])
    ctx_t.cfg.detect = replace(ctx_t.cfg.detect, **DETECT_OVERRIDES)
    ctx_t.cfg.fpr = replace(ctx_t.cfg.fpr, **FPR_SCHEDULE)
    run.log("FPR stage (OOF maps, candidate cubes, fold classifiers, combination)")
    combination = train_fpr(ctx_t, run.rt, resume=True)

    records = {r.seriesuid: r for r in read_dataset(ctx_t.cfg.paths)}
    oof = pd.concat([pd.read_csv(ctx_t.layout.fpr_fold_dir(f) / "val_candidates.csv", dtype={"seriesuid": str})
                     for f in sorted(int(f) for f in ctx_t.folds["fold"].unique() if f != "holdout")])
    oof = oof[oof["source"] == "map"]
    oof_uids = sorted(set(ctx_t.folds["seriesuid"]) - holdout_uids(ctx_t.folds))
    oof_scans = [records[u].load(with_image=False) for u in oof_uids]
    oof = oof.assign(probability=combine(oof["fpr_logit"], oof["seg_probability"], combination["weight"]))
    results = summaries(oof, oof_scans, "OOF teachers")

    run.log("hold-out: student maps, candidates, FPR")
    holdout = holdout_detections(run, ctx_t, ctx_s, out)
    atomic_to_csv(holdout, out / "holdout_candidates.csv", float_format="%.5g")
    hold_scans = [records[u].load(with_image=False) for u in sorted(holdout_uids(ctx_t.folds))]
    results.update(summaries(holdout, hold_scans, "hold-out student"))

    table = froc_table(results).assign(recall=[r["recall"] for r in results.values()],
                                       candidates_per_scan=[r["candidates_per_scan"] for r in results.values()])
    atomic_to_csv(table, out / "summary.csv", float_format="%.4f")
    groups = groups_table({k: v for k, v in results.items() if "with FPR" in k})
    atomic_to_csv(groups, out / "sensitivity_by_group.csv", float_format="%.4f")
    for key, name in (("OOF teachers", "froc_oof.png"), ("hold-out student", "froc_holdout.png")):
        plot_froc({k.split(", ")[1]: v for k, v in results.items() if k.startswith(key)}, out / name,
                  title=f"{key}, {results[key + ', with FPR']['scans']} scans")
    for key, r in results.items():
        atomic_to_csv(r["curve"], out / f"curve_{key.replace(', ', '_').replace(' ', '-')}.csv", float_format="%.5g")
    atomic_write_text(out / "combination.json", json.dumps(combination, indent=1, default=float))
    return write_report(table, groups, combination, out)


def write_report(table: pd.DataFrame, groups: pd.DataFrame, combination: dict, out: Path) -> str:
    rate_cols = [f"sens_at_{r:g}" for r in FROC_FPS]
    lines = ["# Detection benchmark", "",
             f"Classifier weight {combination['weight']:g} ({combination['weight_source']}).", "",
             "| set, ranking | scans | nodules | candidates/scan | recall | CPM (95% CI) | "
             + " | ".join(f"@{r:g}" for r in FROC_FPS) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(FROC_FPS)]
    for r in table.to_dict("records"):
        rates = " | ".join(f"{r[c]:.3f}" for c in rate_cols)
        lines.append(f"| {r['ranking']} | {r['scans']} | {r['nodules']} | {r['candidates_per_scan']:.1f} | "
                     f"{r['recall']:.3f} | **{r['cpm']:.3f}** ({r['ci_low']:.3f}-{r['ci_high']:.3f}) | {rates} |")
    lines += ["", "Sensitivity by group at 1 and 4 false positives per scan (with FPR):", "",
              "| set | grouping | group | nodules | @1 FP | @4 FP |", "|---|---|---|---|---|---|"]
    wide = groups.pivot_table(index=["ranking", "grouping", "group", "nodules"], columns="fps_per_scan",
                              values="sensitivity").reset_index()
    for r in wide.itertuples(index=False):
        lines.append(f"| {r[0].split(', ')[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.3f} | {r[5]:.3f} |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "report.md", text)
    return text
