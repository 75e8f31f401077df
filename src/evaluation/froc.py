"""LUNA16 FROC and CPM of a whole-scan submission.

FROC follows the LUNA16 evaluation: a candidate is a hit when it lies within the radius
(diameter / 2) of an annotated nodule; each nodule counts once (its best candidate);
candidates that hit an ``annotations_excluded.csv`` finding are ignored; every other
candidate is a false positive. CPM = mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8
false positives per scan.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from src.data.candidates import FALSE_POSITIVE, match_candidates

FROC_FPS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


# ----------------------------------------------------------------------------- FROC / CPM


def score_candidates(candidates: pd.DataFrame, annotations: pd.DataFrame, excluded: pd.DataFrame,
                     seriesuids: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """(best candidate probability per annotated nodule, -inf when none hits it; the false
    positives: seriesuid + probability). Rows of other scans are dropped."""
    uids = set(seriesuids)
    annotations = annotations[annotations["seriesuid"].isin(uids)].reset_index(drop=True)
    excluded = excluded[excluded["seriesuid"].isin(uids)]
    candidates = candidates[candidates["seriesuid"].isin(uids)].reset_index(drop=True)
    labels, _ = match_candidates(candidates, annotations, excluded)
    best = np.full(len(annotations), -np.inf)
    prob = candidates["probability"].to_numpy(float)
    # as the official script: a candidate inside two overlapping nodules counts for both
    xyz = candidates[["coordX", "coordY", "coordZ"]].to_numpy(float)
    a_xyz = annotations[["coordX", "coordY", "coordZ"]].to_numpy(float)
    radius = annotations["diameter_mm"].to_numpy(float) / 2
    for uid, rows in candidates.groupby("seriesuid").indices.items():
        cols = np.flatnonzero(annotations["seriesuid"].to_numpy() == uid)
        if len(cols):
            inside = np.linalg.norm(xyz[rows, None] - a_xyz[None, cols], axis=-1) <= radius[cols]
            best[cols] = np.maximum(best[cols], np.where(inside, prob[rows, None], -np.inf).max(axis=0))
    false_pos = candidates.loc[labels == FALSE_POSITIVE, ["seriesuid", "probability"]].reset_index(drop=True)
    return best, false_pos


def sensitivity_at(best: np.ndarray, fp_scores: np.ndarray, n_scans: int, rates=FROC_FPS) -> np.ndarray:
    """Sensitivity at each FP rate: the lowest threshold with at most rate x scans false
    positives at or above it (the FROC curve's points, computed directly)."""
    fp = np.sort(np.asarray(fp_scores, dtype=float))[::-1]
    out = []
    for rate in rates:
        allowed = int(np.floor(rate * n_scans + 1e-9))
        cut = fp[allowed] if allowed < len(fp) else -np.inf   # the first FP that would be one too many
        out.append(float(np.mean(best > cut)) if len(best) else 0.0)
    return np.array(out)


def froc(candidates: pd.DataFrame, annotations: pd.DataFrame, excluded: pd.DataFrame,
         seriesuids: list[str]) -> tuple[pd.DataFrame, float, pd.DataFrame]:
    """-> (curve: fps_per_scan, sensitivity, threshold; CPM; sensitivity at the 7 FP rates)."""
    n_scans = max(len(set(seriesuids)), 1)
    best, false_pos = score_candidates(candidates, annotations, excluded, seriesuids)
    fp = false_pos["probability"].to_numpy(float)
    thresholds = np.unique(np.concatenate([best[np.isfinite(best)], fp, [np.inf]]))[::-1]
    curve = pd.DataFrame({
        "threshold": thresholds,
        "fps_per_scan": [(fp >= t).sum() / n_scans for t in thresholds],
        "sensitivity": [(best >= t).sum() / max(len(best), 1) for t in thresholds],
    })
    at = sensitivity_at(best, fp, n_scans)
    return curve, float(np.mean(at)), pd.DataFrame({"fps_per_scan": FROC_FPS, "sensitivity": at})


def froc_with_ci(candidates: pd.DataFrame, annotations: pd.DataFrame, excluded: pd.DataFrame,
                 seriesuids: list[str], n_boot: int = 1000, seed: int = 0) -> dict:
    """CPM with a 95 % bootstrap CI over scans (scans resampled with replacement, each
    bringing its nodules and its false positives), the sensitivity at each FP rate, the
    curve, and each nodule's best candidate probability (``per_nodule``)."""
    uids = sorted(set(seriesuids))
    curve, cpm, points = froc(candidates, annotations, excluded, uids)
    best, false_pos = score_candidates(candidates, annotations, excluded, uids)
    truth = annotations[annotations["seriesuid"].isin(set(uids))].reset_index(drop=True)
    out = {"cpm": cpm, "scans": len(uids), "nodules": len(truth),
           **{f"sens_at_{r:g}": float(s) for r, s in zip(FROC_FPS, points["sensitivity"])},
           "curve": curve, "per_nodule": truth.assign(best_probability=best)}
    if n_boot:
        stats = [np.mean(sensitivity_at(b, f, len(uids))) for b, f in _resampled(best, false_pos, truth, uids,
                                                                                 n_boot, seed)]
        out["ci_low"], out["ci_high"] = (float(v) for v in np.percentile(stats, [2.5, 97.5]))
    return out


def _resampled(best: np.ndarray, false_pos: pd.DataFrame, truth: pd.DataFrame, uids: list[str], n_boot: int,
               seed: int):
    """Bootstrap replicates over scans (each brings its nodules and its false positives):
    (best probability per nodule, false-positive scores) per replicate; the same seed draws
    the same scans, so two rankings of the same scans are resampled in pairs."""
    rng = np.random.default_rng(seed)
    by_scan_best = {u: best[truth["seriesuid"].to_numpy() == u] for u in uids}
    by_scan_fp = {u: g["probability"].to_numpy(float) for u, g in false_pos.groupby("seriesuid")}
    for _ in range(n_boot):
        pick = rng.choice(len(uids), len(uids), replace=True)
        yield (np.concatenate([by_scan_best[uids[i]] for i in pick]),
               np.concatenate([by_scan_fp.get(uids[i], np.zeros(0)) for i in pick]))


def paired_cpm_difference(a: pd.DataFrame, b: pd.DataFrame, annotations: pd.DataFrame, excluded: pd.DataFrame,
                          seriesuids: list[str], n_boot: int = 1000, seed: int = 0) -> dict:
    """CPM(a) - CPM(b) of two rankings of the same scans, with a 95 % CI from resampling the
    scans in pairs (both rankings see the same draw)."""
    uids = sorted(set(seriesuids))
    truth = annotations[annotations["seriesuid"].isin(set(uids))].reset_index(drop=True)
    scored = [score_candidates(c, annotations, excluded, uids) for c in (a, b)]
    cpms = [float(np.mean(sensitivity_at(best, fp["probability"].to_numpy(float), len(uids)))) for best, fp in scored]
    draws = [list(_resampled(best, fp, truth, uids, n_boot, seed)) for best, fp in scored]
    diffs = [np.mean(sensitivity_at(*x, len(uids))) - np.mean(sensitivity_at(*y, len(uids))) for x, y in zip(*draws)]
    low, high = np.percentile(diffs, [2.5, 97.5]) if diffs else (np.nan, np.nan)
    return {"difference": cpms[0] - cpms[1], "ci_low": float(low), "ci_high": float(high), "scans": len(uids)}


def sensitivity_by_group(summary: dict, group: pd.Series, false_pos_rates=(1.0, 4.0)) -> pd.DataFrame:
    """Sensitivity of each group of nodules (size bin, texture, attachment) at the thresholds
    where the whole set has 1 and 4 false positives per scan (from ``froc_with_ci``'s curve)."""
    curve, per_nodule = summary["curve"], summary["per_nodule"]
    rows = []
    for rate in false_pos_rates:
        ok = curve[curve["fps_per_scan"] <= rate]
        cut = float(ok["threshold"].min()) if len(ok) else np.inf
        hit = per_nodule["best_probability"].to_numpy() >= cut
        for name, members in pd.Series(hit).groupby(group.to_numpy()):
            rows.append({"fps_per_scan": rate, "group": name, "nodules": len(members),
                         "sensitivity": float(members.mean())})
    return pd.DataFrame(rows)


def froc_points(summary: dict) -> pd.DataFrame:
    return pd.DataFrame({"fps_per_scan": FROC_FPS, "sensitivity": [summary[f"sens_at_{r:g}"] for r in FROC_FPS]})


def froc_table(results: dict[str, dict]) -> pd.DataFrame:
    """One row per ranking: CPM, its CI and the sensitivity at each FP rate."""
    keep = ["cpm", "ci_low", "ci_high", "scans", "nodules", *[f"sens_at_{r:g}" for r in FROC_FPS]]
    return pd.DataFrame([{"ranking": name, **{k: r.get(k, np.nan) for k in keep}} for name, r in results.items()])


def plot_froc(results: dict[str, dict], path: str | Path, title: str = "") -> Path:
    """FROC curves of one or more rankings (``froc_with_ci`` summaries) on one log-x plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from src.utils import atomic_path

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, r in results.items():
        ci = f" ({r['ci_low']:.2f}-{r['ci_high']:.2f})" if "ci_low" in r else ""
        line, = ax.plot(r["curve"]["fps_per_scan"], r["curve"]["sensitivity"], lw=1.5, drawstyle="steps-post",
                        label=f"{name}: CPM {r['cpm']:.3f}{ci}")
        points = froc_points(r)
        ax.plot(points["fps_per_scan"], points["sensitivity"], "o", color=line.get_color(), ms=4)
    ax.set_xscale("log", base=2)
    ax.set_xlim(1 / 16, 16)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"{title} FROC".strip())
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)
