"""Leaderboard tables from per-nodule metrics: overall, and by each grouping of
``src.data.groups.GROUPS`` (size bin, texture, attachment).

Input: one row per (model, nodule) with the metrics of ``src.evaluation.metrics``, a column
per grouping and reader_dice (the inter-reader Dice of the same nodule: the ceiling).
Output: a tidy CSV (one row per model x group x metric) and Markdown tables.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from src.data.groups import GROUPS
from src.evaluation.metrics import METRICS, NSD_TOLERANCE_MM

SCORED_NOTE = ("Scored: every nodule of the reference standard (LUNA16 layout: annotations.csv) that has a "
               "fine mask, segmented from its centre and diameter alone (where nothing lies above threshold "
               "there, the given sphere stands in: 'sphere fallbacks'); annotations_excluded.csv findings and "
               "mask labels without a coordinate are ignored (paths.mask_only_nodules=true scores the latter, centred "
               "and sized from their own masks: 'coordinates from masks', optimistic for every method). "
               f"HD95 (mm) and precision are means over non-empty predictions (the empty ones are counted); NSD at "
               f"{NSD_TOLERANCE_MM:g} mm.")


def _mean_std(values: pd.Series) -> str:
    v = values.dropna()
    if v.empty:
        return "-"
    return f"{v.mean():.3f} ± {v.std(ddof=0):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def overall_table(per_nodule: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for model, g in per_nodule.groupby("model", sort=False):
        row = {"model": model, "nodules": len(g)}
        row.update({m: _mean_std(g[m]) for m in METRICS})
        row["empty predictions"] = int(g["hd95_mm"].isna().sum())
        if "sphere_fallback" in g:   # nothing found at the coordinates: the given sphere stood in
            row["sphere fallbacks"] = int(g["sphere_fallback"].eq(True).sum())
        if "coords_from_mask" in g and g["coords_from_mask"].eq(True).any():   # their prompt is the truth's
            row["coordinates from masks"] = int(g["coords_from_mask"].eq(True).sum())
        row["reader ceiling"] = _mean_std(g["reader_dice"])
        rows.append(row)
    return pd.DataFrame(rows)


def breakdown_table(per_nodule: pd.DataFrame, by: str) -> pd.DataFrame:
    """Mean Dice (n) per model and group of the grouping ``by`` (a key of ``GROUPS``); the
    last row is the inter-reader ceiling."""
    groups = [g for g in GROUPS[by].labels if (per_nodule[by] == g).any()]
    rows = []
    for model, g in per_nodule.groupby("model", sort=False):
        row = {"model": model}
        for key in groups:
            sel = g[g[by] == key]["dice"]
            row[key] = f"{sel.mean():.3f} ({len(sel)})" if len(sel) else "-"
        rows.append(row)
    first = per_nodule[per_nodule["model"] == per_nodule["model"].iloc[0]]
    ceiling = {"model": "inter-reader ceiling"}
    for key in groups:
        sel = first[first[by] == key]["reader_dice"].dropna()
        ceiling[key] = f"{sel.mean():.3f} ({len(sel)})" if len(sel) else "-"
    rows.append(ceiling)
    return pd.DataFrame(rows)


def tidy(per_nodule: pd.DataFrame) -> pd.DataFrame:
    """Long CSV: model, group (all | size:3-6 | texture:solid | attachment:isolated ...),
    metric, mean, std, n."""
    out = []
    for model, g in per_nodule.groupby("model", sort=False):
        parts = [("all", g)] + [(f"{grouping.tag}:{k}", s) for name, grouping in GROUPS.items()
                                for k, s in g.groupby(name)]
        for group, sub in parts:
            for metric in (*METRICS, "reader_dice"):
                v = sub[metric].dropna()
                out.append(dict(model=model, group=group, metric=metric, mean=v.mean() if len(v) else np.nan,
                                std=v.std(ddof=0) if len(v) else np.nan, n=len(v)))
    return pd.DataFrame(out)


def to_markdown(table: pd.DataFrame) -> str:
    cols = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def render(per_nodule: pd.DataFrame, title: str, extra: pd.DataFrame | None = None) -> str:
    """The full Markdown leaderboard: overall, optional extra table, then Dice by each grouping."""
    sections = [f"# {title}", "", SCORED_NOTE, "", "## Per-nodule metrics (mean ± std)", "",
                to_markdown(overall_table(per_nodule))]
    if extra is not None and not extra.empty:
        sections += ["", "## Speed", "", to_markdown(extra)]
    for name, grouping in GROUPS.items():
        sections += ["", f"## Dice by {grouping.title}, (n)", "",
                     to_markdown(breakdown_table(per_nodule, name))]
    return "\n".join(sections) + "\n"
