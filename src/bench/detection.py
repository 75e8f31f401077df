"""The detection benchmark: whole-scan CPM of the learned pipeline, with and without false-
positive reduction, beside a classical detector.

On the quality benchmark's default set (240 scans since the v2 dataset; half held out) with its SSL teachers
and SSLKD student (trained there, or here if missing):

1. ``train.py --stage fpr``'s own code on that experiment with OOF candidates: each fold
   teacher's map on its validation scans, its peaks merged with classical blobs, candidate
   cubes, one classifier per fold (with a hard-negative round), the combination weight
   chosen on OOF CPM. -> the OOF FROC (every non-hold-out scan scored by models that never
   trained on it).
2. The hold-out scans, as ``infer.py`` runs them: the student's whole-scan map, its
   candidates, rescored by the fold classifiers. -> the hold-out FROC.
3. The classical baseline on the hold-out scans: the blob detector alone
   (``src.data.blobs``), up to ``max_candidates`` per scan, ranked by its own response.
4. Transfer: the same models on 30 hold-out scans of each shifted condition of the quality
   benchmark (noise, thick slices, texture mix, soft edges; full budget only).

Each set is ranked four ways: the map's peaks alone, map + blobs (the map's probability),
map + blobs + FPR (the pipeline), and the classical blobs. CPMs carry 95 % bootstrap CIs
over scans, the pipeline minus the classical detector a paired CI; recall (any threshold)
and the sensitivity at 1 and 4 false positives per scan are given by size, texture and
attachment. Everything lands in ``outputs/bench/detection/``.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from src.bench.protocol import DEFAULT, MAIN_ARMS, SHIFTED, SSL, SSLKD
from src.bench.runner import BenchRun, slug
from src.config import ModelConfig
from src.data.blobs import find_blobs
from src.data.candidates import DETECTED, excluded_table, nodule_table
from src.data.folds import development_uids, fold_ids, holdout_uids, read_folds
from src.data.groups import GROUPS
from src.data.manifest import read_dataset
from src.evaluation.froc import (
    FROC_FPS,
    froc_table,
    froc_with_ci,
    paired_cpm_difference,
    plot_froc,
    sensitivity_by_group,
)
from src.predict.detect import read_map, write_maps
from src.predict.experiment import TrainedExperiment
from src.predict.fpr import CandidateScorer, combine
from src.predict.run import detect_all
from src.predict.segment import to_model_volume
from src.train.fpr import train_fpr
from src.utils import atomic_to_csv, atomic_write_text, progress

# The FPR stage as the bench runs it: OOF candidates (the point of the benchmark), and a
# longer schedule than the demo's for ~50 x more candidates. The 3D CNN is trained on the
# same candidates with the same schedule, beside the multi-view classifier. Both are named
# here, not taken from the config, whose default changes as classifiers are compared.
DETECT_OVERRIDES = dict(candidate_source="oof")
MULTIVIEW = ModelConfig(arch="MultiView", encoder="lcnet_050", head_prior=0.05)
CUBE3D = ModelConfig(arch="Cube3D", head_prior=0.05)
FPR_SCHEDULES = {"full": dict(epochs=10, steps_per_epoch=60, batch_size=64),
                 "quick": dict(epochs=2, steps_per_epoch=15, batch_size=32)}
SHIFTED_SCANS = {"full": 30, "quick": 0}   # hold-out scans per shifted condition (0: none)
PIPELINE, CLASSICAL, PIPELINE_3D = "map + blobs + FPR", "classical blobs", "map + blobs + FPR (3D CNN)"
RANKINGS = ("map peaks only", "map + blobs", PIPELINE, PIPELINE_3D, CLASSICAL)


def scan_detections(records: list, models, scorer_3d: CandidateScorer, maps: Path, infer_cfg,
                    desc: str) -> pd.DataFrame:
    """Whole-scan candidates of ``records`` as ``infer.py`` finds and rescores them
    (``detect_all`` with ``models``: ``probability``), also rescored by the 3D CNN variant
    (``probability_3d``). The network's maps are kept in ``maps`` (a rerun reuses them)."""
    write_maps(records, models.predictor, models.cache_cfg, infer_cfg.batch_size, lambda uid: maps / f"{uid}.npz",
               desc=f"{desc}: maps")
    tables = []
    for record in progress(records, desc=f"{desc}: candidates + FPR"):
        mv = to_model_volume(record.load(with_masks=False), models.cache_cfg)
        _, _, _, table = detect_all(mv, models, infer_cfg, read_map(maps / f"{record.seriesuid}.npz"))
        rescored = scorer_3d.rescore(mv.scan, table.drop(columns="probability"))
        tables.append(table.assign(probability_3d=rescored.set_index("nodule_id").loc[
            table["nodule_id"], "probability"].to_numpy()))
    return pd.concat(tables, ignore_index=True)


def detection_models(run: BenchRun, ctx_teachers, ctx_student, ctx_3d):
    """The student as ``infer.py`` loads it, with the multi-view FPR (the teachers'
    experiment), and the 3D CNN variant's scorer."""
    cfg = replace(ctx_student.cfg, detect=ctx_teachers.cfg.detect)
    models = TrainedExperiment(ctx_student.layout, cfg).models("student", run.rt, tta=False, fpr=False)
    models.fpr, scorer_3d = (CandidateScorer.load(c.layout.fpr_checkpoints(), c.layout.fpr_combination, run.rt)
                             for c in (ctx_teachers, ctx_3d))
    return models, scorer_3d


def shifted_detections(run: BenchRun, ctx_student, models, scorer_3d, out: Path,
                       n_scans: int) -> dict[str, tuple[list, pd.DataFrame]]:
    """The same models on the hold-out scans of each shifted condition (the first
    ``n_scans``; a scan the default student trained on is left out): condition -> (records,
    detections), kept in ``out`` per condition."""
    trained_on = development_uids(ctx_student.folds)
    found = {}
    for cond in SHIFTED:
        run.prepare(cond)
        cfg = run.config(cond)
        hold = sorted(holdout_uids(read_folds(run.folds_path(cond, 0.2))) - trained_on)[:n_scans]
        records = [r for r in read_dataset(cfg.paths) if r.seriesuid in set(hold)]
        path = out / f"shifted_{slug(cond.name)}.csv"
        if path.is_file():
            table = pd.read_csv(path, dtype={"seriesuid": str})
        else:
            table = scan_detections(records, models, scorer_3d, out / f"maps_{slug(cond.name)}",
                                    ctx_student.cfg.infer, cond.name)
            atomic_to_csv(table, path, float_format="%.5g")
        found[cond.name] = (records, table)
    return found


def classical_detections(records: list, ctx, path: Path) -> pd.DataFrame:
    """The blob detector alone: up to ``max_candidates`` blobs per scan in the closed lungs,
    scored by their own response (kept in ``path``: the scans are read once)."""
    if path.is_file():
        return pd.read_csv(path, dtype={"seriesuid": str})
    det, tables = ctx.cfg.detect, []
    for record in progress(records, desc="classical blobs"):
        mv = to_model_volume(record.load(), ctx.cache.config)
        blobs = find_blobs(mv.image, mv.geometry, mv.lung_mask(), det.max_candidates, det.blob_min_response)
        tables.append(blobs.assign(seriesuid=record.seriesuid, probability=blobs["blob_response"]))
    table = pd.concat(tables, ignore_index=True)
    atomic_to_csv(table, path, float_format="%.5g")
    return table


def rankings(detections: pd.DataFrame, fpr_probability, fpr_3d_probability,
             classical: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """The rankings of one set's scans (RANKINGS; the classical one where it was run)."""
    seg = detections.assign(probability=detections["seg_probability"])
    ranked = {RANKINGS[0]: seg[seg["source"].isin(("map", "both"))], RANKINGS[1]: seg,
              PIPELINE: detections.assign(probability=np.asarray(fpr_probability)),
              PIPELINE_3D: detections.assign(probability=np.asarray(fpr_3d_probability))}
    return ranked if classical is None else {**ranked, CLASSICAL: classical}


def reference(records: list) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(annotated nodules, excluded findings, seriesuids) of some scans, read one at a time
    (a scan read without its image still holds its masks: 120 of them fill the memory)."""
    scans = (r.load(with_image=False) for r in progress(records, desc="reference standard"))
    tables = [(nodule_table([s]), excluded_table([s])) for s in scans]
    return (pd.concat([t[0] for t in tables], ignore_index=True), pd.concat([t[1] for t in tables], ignore_index=True),
            sorted(r.seriesuid for r in records))


def summaries(ranked: dict[str, pd.DataFrame], records: list, label: str) -> tuple[dict[str, dict], list[dict]]:
    """FROC summaries of each ranking of a set (keys '<set>, <ranking>'), and CPM differences
    paired over the scans: the pipeline minus the classical detector and minus no FPR, the
    3D CNN minus the multi-view classifier."""
    truth, excluded, uids = reference(records)
    out = {}
    for name, table in ranked.items():
        result = froc_with_ci(table, truth, excluded, uids)
        result["recall"] = float(np.isfinite(result["per_nodule"]["best_probability"]).mean())
        result["candidates_per_scan"] = len(table) / max(len(uids), 1)
        out[f"{label}, {name}"] = result
    paired = [{"set": label, "comparison": f"{a} - {b}",
               **paired_cpm_difference(ranked[a], ranked[b], truth, excluded, uids)}
              for a, b in ((PIPELINE, CLASSICAL), (PIPELINE, RANKINGS[1]), (PIPELINE_3D, PIPELINE)) if b in ranked]
    return out, paired


def groups_table(results: dict[str, dict]) -> pd.DataFrame:
    """Per ranking and group: nodules, recall (any threshold), sensitivity at 1 and 4 FP/scan."""
    rows = []
    for name, r in results.items():
        nodules = r["per_nodule"]
        found = np.isfinite(nodules["best_probability"].to_numpy())
        for grouping in GROUPS.values():
            values = nodules[grouping.source].map(grouping.classify)
            at = sensitivity_by_group(r, values).pivot_table(index="group", columns="fps_per_scan",
                                                             values="sensitivity")
            for group, members in pd.Series(found).groupby(values.to_numpy()):
                rows.append({"ranking": name, "grouping": grouping.tag, "group": group, "nodules": len(members),
                             "recall": float(members.mean()), "sens_at_1": float(at.loc[group, 1.0]),
                             "sens_at_4": float(at.loc[group, 4.0])})
    return pd.DataFrame(rows)


def run_detection(run: BenchRun, out: Path, budget: str = "full") -> str:
    arms = {a.name: a for a in MAIN_ARMS}
    run.prepare(DEFAULT)
    ctx_t = run.train(DEFAULT, arms[SSL], 0)
    ctx_s = run.train(DEFAULT, arms[SSLKD], 0, teachers=arms[SSL])
    ctx_t.cfg.detect = replace(ctx_t.cfg.detect, **DETECT_OVERRIDES)
    ctx_t.cfg.fpr = replace(ctx_t.cfg.fpr, model=MULTIVIEW, **FPR_SCHEDULES[budget])
    run.log("FPR stage (OOF maps, candidates, fold classifiers with a hard-negative round, combination)")
    combination = train_fpr(ctx_t, run.rt, resume=True)
    run.log("FPR stage again with a 3D CNN on the same candidates")
    cfg_3d = replace(ctx_t.cfg, fpr=replace(ctx_t.cfg.fpr, model=CUBE3D))
    ctx_3d = replace(ctx_t, cfg=cfg_3d, layout=replace(ctx_t.layout, fpr="fpr-cube3d"))
    combination_3d = train_fpr(ctx_3d, run.rt, resume=True)

    records = {r.seriesuid: r for r in read_dataset(ctx_t.cfg.paths)}
    oof, oof_3d = (pd.concat([pd.read_csv(c.layout.fpr_val_candidates(f), dtype={"seriesuid": str})
                              for f in fold_ids(c.folds)], ignore_index=True) for c in (ctx_t, ctx_3d))
    detected = oof["source"].isin(DETECTED).to_numpy()
    oof, oof_3d = oof[detected], oof_3d[detected]   # the same rows in the same order (one candidate cache)
    oof_uids = sorted(set(ctx_t.folds["seriesuid"]) - holdout_uids(ctx_t.folds))
    hold_uids = sorted(holdout_uids(ctx_t.folds))
    oof_scans = [records[u] for u in oof_uids]
    ranked = rankings(oof, combine(oof["fpr_logit"], oof["seg_probability"], combination["weight"]),
                      combine(oof_3d["fpr_logit"], oof_3d["seg_probability"], combination_3d["weight"]))
    results, paired_oof = summaries(ranked, oof_scans, "OOF teachers")

    run.log("hold-out: student maps, candidates, FPR")
    models, scorer_3d = detection_models(run, ctx_t, ctx_s, ctx_3d)
    hold_scans = [records[u] for u in hold_uids]
    holdout = scan_detections(hold_scans, models, scorer_3d, out / "holdout_maps", ctx_s.cfg.infer, "hold-out")
    atomic_to_csv(holdout, out / "holdout_candidates.csv", float_format="%.5g")
    run.log("classical blobs on the hold-out scans")
    classical = classical_detections([records[u] for u in hold_uids], ctx_t, out / "classical_blobs.csv")
    classical = classical[classical["seriesuid"].isin(hold_uids)]
    hold_results, paired_hold = summaries(
        rankings(holdout, holdout["probability"], holdout["probability_3d"], classical), hold_scans, "hold-out student")
    results.update(hold_results)
    if SHIFTED_SCANS[budget]:
        run.log(f"shifted conditions: the same models on up to {SHIFTED_SCANS[budget]} hold-out scans each")
        for name, (scans, table) in shifted_detections(run, ctx_s, models, scorer_3d, out,
                                                        SHIFTED_SCANS[budget]).items():
            shifted_results, paired = summaries(rankings(table, table["probability"], table["probability_3d"]),
                                                scans, f"hold-out {name}")
            results.update(shifted_results)
            paired_hold += paired

    table = froc_table(results).assign(recall=[r["recall"] for r in results.values()],
                                       candidates_per_scan=[r["candidates_per_scan"] for r in results.values()])
    atomic_to_csv(table, out / "summary.csv", float_format="%.4f")
    paired = pd.DataFrame(paired_oof + paired_hold)
    atomic_to_csv(paired, out / "paired_cpm.csv", float_format="%.4f")
    groups = groups_table(results)
    atomic_to_csv(groups, out / "recall_by_group.csv", float_format="%.4f")
    for key, name in (("OOF teachers", "froc_oof.png"), ("hold-out student", "froc_holdout.png")):
        plot_froc({k.split(", ")[1]: v for k, v in results.items() if k.startswith(key)}, out / name,
                  title=f"{key}, {results[f'{key}, {PIPELINE}']['scans']} scans")
    for key, r in results.items():
        atomic_to_csv(r["curve"], out / f"curve_{key.replace(', ', '_').replace(' ', '-')}.csv", float_format="%.5g")
    atomic_write_text(out / "combination.json", json.dumps({"multi-view": combination, "3D CNN": combination_3d},
                                                          indent=1, default=float))
    return write_report(table, paired, groups, {"multi-view": combination, "3D CNN": combination_3d}, out)


def write_report(table: pd.DataFrame, paired: pd.DataFrame, groups: pd.DataFrame, combinations: dict[str, dict],
                 out: Path) -> str:
    rate_cols = [f"sens_at_{r:g}" for r in FROC_FPS]
    lines = ["# Detection benchmark", ""]
    for name, c in combinations.items():
        auc = "n/a" if c.get("oof_auc") is None else f"{c['oof_auc']:.3f}"
        lines.append(f"- FPR {name}: pooled OOF AUC {auc}; classifier weight {c['weight']:g} ({c['weight_source']}).")
    lines += ["",
             "| set, ranking | scans | nodules | candidates/scan | recall | CPM (95% CI) | "
             + " | ".join(f"@{r:g}" for r in FROC_FPS) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(FROC_FPS)]
    for r in table.to_dict("records"):
        rates = " | ".join(f"{r[c]:.3f}" for c in rate_cols)
        lines.append(f"| {r['ranking']} | {r['scans']} | {r['nodules']} | {r['candidates_per_scan']:.1f} | "
                     f"{r['recall']:.3f} | **{r['cpm']:.3f}** ({r['ci_low']:.3f}-{r['ci_high']:.3f}) | {rates} |")
    lines += ["", "Paired over scans (bootstrap, 1000 draws):", "", "| set | comparison | CPM difference (95% CI) |",
              "|---|---|---|"]
    for r in paired.to_dict("records"):
        lines.append(f"| {r['set']} | {r['comparison']} | {r['difference']:+.3f} ({r['ci_low']:+.3f} to "
                     f"{r['ci_high']:+.3f}) |")
    lines += ["", "Recall (any threshold) and sensitivity at 1 / 4 false positives per scan, by group:", "",
              "| set | grouping | group | nodules | " + " | ".join(RANKINGS) + " |",
              "|---|---|---|---|" + "---|" * len(RANKINGS)]
    groups = groups.assign(set=groups["ranking"].str.split(", ").str[0],
                           method=groups["ranking"].str.split(", ").str[1])
    for (name, tag, group), g in groups.groupby(["set", "grouping", "group"], sort=False):
        cells = g.set_index("method")
        lines.append(f"| {name} | {tag} | {group} | {int(g['nodules'].iloc[0])} | " + " | ".join(
            f"{cells.at[m, 'recall']:.2f} / {cells.at[m, 'sens_at_1']:.2f} / {cells.at[m, 'sens_at_4']:.2f}"
            if m in cells.index else "-" for m in RANKINGS) + " |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "report.md", text)
    return text
