"""The FPR stage's last step (``train.py --stage fpr``, step 4): how much the classifier
counts against the map. The weight of the classifier's logit against the map's peak
probability that maximises the CPM of the pooled OOF detected candidates
(``combination.json``), with the OOF FROC with and without FPR, after checking that the
classifiers learned anything. The hold-out is never touched.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from src.config import code_version
from src.data.candidates import DETECTED, HIT, IGNORED, excluded_table, nodule_table
from src.data.context import StageContext
from src.data.folds import fold_ids
from src.data.scan import ScanRecord
from src.evaluation.froc import froc_with_ci
from src.predict.fpr import combine
from src.utils import atomic_to_csv, atomic_write_text

WEIGHTS = np.round(np.linspace(0.0, 1.0, 11), 2)   # classifier weights tried on OOF


def classifier_health(oof: pd.DataFrame, floor: float) -> tuple[float | None, str | None]:
    """(pooled OOF AUC of the classifiers on their own validation candidates, what is wrong
    or None). A classifier that gives (nearly) every candidate the same score, or ranks
    hits no better than ``floor``, has learned nothing (a collapsed FPR stage would
    otherwise pass silently as a no-op). (None, None): no candidates of both kinds to judge on."""
    scored = oof[oof["label"] != IGNORED]
    hit = (scored["label"] == HIT).to_numpy()
    if hit.all() or not hit.any():
        return None, None
    auc = float(roc_auc_score(hit, scored["fpr_logit"]))
    if np.ptp(scored["fpr_logit"].to_numpy()) < 1e-4:
        return auc, f"every validation candidate gets the same score ({scored['fpr_logit'].iloc[0]:.4g})"
    if auc < floor:
        return auc, f"OOF AUC {auc:.3f} is below detect.min_classifier_auc {floor:g}"
    return auc, None


def choose_combination(ctx: StageContext, records: list[ScanRecord]) -> dict:
    """The classifier weight that maximises the pooled OOF CPM of the detected candidates."""
    det = ctx.cfg.detect
    oof = pd.concat([pd.read_csv(ctx.layout.fpr_val_candidates(f), dtype={"seriesuid": str})
                     for f in fold_ids(ctx.folds)], ignore_index=True)
    uids = sorted(oof["seriesuid"].unique())
    scans = [r.load(with_image=False) for r in records if r.seriesuid in set(uids)]
    truth, excluded = nodule_table(scans), excluded_table(scans)
    found = oof[oof["source"].isin(DETECTED)]
    auc, problem = classifier_health(oof, det.min_classifier_auc)
    if auc is None:
        print("note: no OOF candidates of both kinds: the FPR classifiers' AUC cannot be checked", file=sys.stderr)
    result = dict(scans=len(uids), nodules=len(truth), code_version=code_version(),
                  candidate_source=det.candidate_source, oof_auc=auc, classifier_problem=problem)
    if found.empty:   # no OOF detections (candidate_source: listed): nothing to choose on
        weight = det.classifier_weight if det.classifier_weight >= 0 else det.default_classifier_weight
        source = "config (no OOF map candidates to choose on)"
    else:
        by_weight = {}
        for w in WEIGHTS:
            scored = found.assign(probability=combine(found["fpr_logit"], found["seg_probability"], w))
            by_weight[float(w)] = froc_with_ci(scored, truth, excluded, uids, n_boot=0)["cpm"]
        result["oof_cpm_by_weight"] = by_weight
        weight = det.classifier_weight if det.classifier_weight >= 0 else max(by_weight, key=by_weight.get)
        source = "config" if det.classifier_weight >= 0 else "chosen on OOF CPM"
    if problem:
        print(f"WARNING: the FPR classifiers learned nothing: {problem}; whole-scan ranking uses the map alone "
              "(classifier weight 0). Train them longer or on more candidates.", file=sys.stderr)
        weight, source = 0.0, f"map alone: the classifiers learned nothing ({problem})"
    result.update(weight=float(weight), weight_source=source)
    if not found.empty:
        for name, w in (("without_fpr", 0.0), ("with_fpr", weight)):
            scored = found.assign(probability=combine(found["fpr_logit"], found["seg_probability"], w))
            summary = froc_with_ci(scored, truth, excluded, uids)
            result[name] = {k: v for k, v in summary.items() if k not in ("curve", "per_nodule")}
            atomic_to_csv(summary["curve"], ctx.layout.fpr_dir / f"oof_froc_{name}.csv", float_format="%.5g")
    atomic_write_text(ctx.layout.fpr_combination, json.dumps(result, indent=1, default=float))
    return result
