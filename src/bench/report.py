"""The quality benchmark's report: tables, paired bootstrap CIs and figures from its CSVs.

Per-nodule rows (condition, seed, model, nodule_uid, metrics) are averaged over the seeds
a model was trained with before nodules are compared, so a paired difference between two
models is a mean over the same nodules, and its 95% CI comes from resampling nodules
(10,000 bootstrap draws, seeded).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from src.data.groups import GROUPS, UNKNOWN
from src.utils import atomic_path

METRICS = ("dice", "iou", "hd95_mm", "nsd")
BOOTSTRAP = 10_000


def bootstrap_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``values`` over resampled nodules."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return np.nan, np.nan
    rng = np.random.default_rng(seed)
    boot = values[rng.integers(0, values.size, size=(BOOTSTRAP, values.size))].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(low), float(high)


def per_nodule_means(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (condition, model, nodule): metrics averaged over the seeds. Scores
    written before a grouping existed are "unknown" in it."""
    keys = ["condition", "model", "nodule_uid"]
    rows = rows.assign(**{name: UNKNOWN for name in GROUPS if name not in rows.columns})
    info = rows.groupby(keys, sort=False)[[*GROUPS, "diameter_mm", "reader_dice"]].first()
    means = rows.groupby(keys, sort=False)[list(METRICS)].mean()
    seeds = rows.groupby(keys, sort=False)["seed"].nunique().rename("seeds")
    return pd.concat([info, means, seeds], axis=1).reset_index()


def paired_difference(means: pd.DataFrame, condition: str, a: str, b: str, metric: str = "dice",
                      seed: int = 0) -> dict:
    """Mean of (a - b) over the nodules both scored, with its bootstrap 95% CI."""
    sel = means[means["condition"] == condition]
    pa = sel[sel["model"] == a].set_index("nodule_uid")[metric]
    pb = sel[sel["model"] == b].set_index("nodule_uid")[metric]
    diff = (pa - pb).dropna().to_numpy()
    low, high = bootstrap_ci(diff, seed)
    return dict(a=a, b=b, n=int(diff.size), mean=float(diff.mean()) if diff.size else np.nan,
                ci_low=low, ci_high=high)


def summary(rows: pd.DataFrame, condition: str, models: list[str]) -> pd.DataFrame:
    """Per model: nodules, Dice mean ± std (per nodule, seeds averaged), the per-seed mean
    Dice, IoU, HD95, NSD, the mean Dice's bootstrap 95% CI, and how many masks over all
    seeds were the given sphere standing in for an empty one ("-" in scores made before)."""
    sel = rows[rows["condition"] == condition]
    means = per_nodule_means(sel)
    out = []
    for model in models:
        m = means[means["model"] == model]
        if m.empty:
            continue
        seeds = sel[sel["model"] == model].groupby("seed")["dice"].mean()
        fallbacks = sel.loc[sel["model"] == model, "sphere_fallback"] if "sphere_fallback" in sel else pd.Series()
        d = m["dice"].to_numpy()
        low, high = bootstrap_ci(d)
        out.append({"model": model, "nodules": len(m), "seeds": int(m["seeds"].max()),
                    "dice": f"{d.mean():.3f} ± {d.std():.3f}", "dice 95% CI": f"{low:.3f}-{high:.3f}",
                    "dice per seed": " / ".join(f"{v:.3f}" for v in seeds),
                    "iou": f"{m['iou'].mean():.3f}", "hd95_mm": f"{m['hd95_mm'].mean():.2f}",
                    "nsd": f"{m['nsd'].mean():.3f}",
                    "sphere fallbacks": "-" if fallbacks.isna().all() else int(fallbacks.eq(True).sum())})
    return pd.DataFrame(out)


def breakdown(rows: pd.DataFrame, condition: str, models: list[str], by: str) -> pd.DataFrame:
    """Mean Dice (n) per model and group of the grouping ``by`` (a key of ``GROUPS``); the
    last row is inter-reader Dice."""
    means = per_nodule_means(rows[rows["condition"] == condition])
    groups = [g for g in GROUPS[by].labels if (means[by] == g).any()]
    out = []
    for model in models:
        m = means[means["model"] == model]
        if not m.empty:
            out.append({"model": model, **{g: f"{m.loc[m[by] == g, 'dice'].mean():.3f} ({(m[by] == g).sum()})"
                                           for g in groups}})
    first = means[means["model"] == models[0]]
    out.append({"model": "inter-reader (reference)",
                **{g: f"{first.loc[first[by] == g, 'reader_dice'].mean():.3f}" for g in groups}})
    return pd.DataFrame(out)


def markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(_cell(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return "-" if np.isnan(value) else f"{value:.3f}"
    return str(value)


def bar_chart(rows: pd.DataFrame, condition: str, models: list[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = per_nodule_means(rows[rows["condition"] == condition])
    values, lows, highs, names = [], [], [], []
    for model in models:
        mean, low, high = mean_ci(means, condition, model)
        if np.isnan(mean):
            continue
        values.append(mean)
        lows.append(mean - low)
        highs.append(high - mean)
        names.append(model)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    ax.barh(range(len(names)), values, xerr=[lows, highs], color="tab:blue", alpha=0.8, capsize=3)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("hold-out nodule Dice (mean, 95% CI)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def learning_curve(points: pd.DataFrame, references: dict[str, float], path: Path) -> Path:
    """``points``: fraction, model family, dice (mean), ci_low, ci_high."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for family, g in points.groupby("family", sort=False):
        g = g.sort_values("fraction")
        ax.errorbar(100 * g["fraction"], g["dice"], yerr=[g["dice"] - g["ci_low"], g["ci_high"] - g["dice"]],
                    marker="o", capsize=3, label=family)
    for (name, value), style in zip(references.items(), (":", "--", "-.")):
        ax.axhline(value, color="gray", ls=style, lw=1, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("training scans with fine masks (%)")
    ax.set_ylabel("hold-out nodule Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def mean_ci(means: pd.DataFrame, condition: str, model: str) -> tuple[float, float, float]:
    """Mean per-nodule Dice of a model on a condition and its bootstrap 95% CI."""
    d = means.loc[(means["condition"] == condition) & (means["model"] == model), "dice"].to_numpy()
    if d.size == 0:
        return np.nan, np.nan, np.nan
    return (float(d.mean()), *bootstrap_ci(d))
