"""Figures: nodule galleries (image + mask contour) and training curves, via matplotlib."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures go to files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from src.utils import atomic_path  # noqa: E402

LUNG_WINDOW = (-1000.0, 400.0)


def nodule_gallery(items: list[dict], path: str | Path, columns: int = 4, title: str = "") -> Path:
    """``items``: dicts with ``image`` (2D HU), optional ``masks`` {name: (2D bool, colour)},
    ``title``. One panel each, lung window, mask outlines on top."""
    rows = max(1, int(np.ceil(len(items) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, item in zip(axes.ravel(), items):
        ax.imshow(item["image"], cmap="gray", vmin=LUNG_WINDOW[0], vmax=LUNG_WINDOW[1],
                  extent=item.get("extent"))
        for mask, colour in item.get("masks", {}).values():
            if mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.0,
                           extent=item.get("extent"), origin="upper")
        ax.set_title(item.get("title", ""), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)


def curve_axis(name: str) -> str:
    """Which panel a training-curve column belongs on: values of one scale share an axis."""
    if name.startswith("train_") or "loss" in name:
        return "losses"
    if name.endswith("_mm"):
        return "distances (mm)"
    return "overlap (0-1)"


def line_plot(table, x: str, series: list[str], path: str | Path, title: str = "") -> Path:
    """One panel per scale (losses, overlap metrics, distances in mm), from a DataFrame."""
    groups: dict[str, list[str]] = {}
    for name in series:
        if name in table.columns and table[name].notna().any():
            groups.setdefault(curve_axis(name), []).append(name)
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(5 * max(1, len(groups)), 3.5), squeeze=False)
    for ax, (group, names) in zip(axes[0], groups.items()):
        for name in names:
            ax.plot(table[x], table[name], marker="o", ms=3, label=name)
        ax.set_xlabel(x)
        ax.set_title(group)
        if group.startswith("overlap"):
            ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(path)


def finding_views(image: np.ndarray, mask: np.ndarray, centre_zyx, spacing_zyx, half_mm: float) -> bytes:
    """PNG of one finding: axial, coronal and sagittal planes through ``centre_zyx`` (voxel),
    ``half_mm`` either side, in mm (thick slices are not squeezed), lung window, the mask's
    outline in red (a cross at the centre when it has none)."""
    import io
    c = np.clip(np.rint(centre_zyx).astype(int), 0, np.asarray(image.shape) - 1)
    reach = np.maximum(np.ceil(half_mm / np.asarray(spacing_zyx, dtype=float)).astype(int), 2)
    lo, hi = np.maximum(c - reach, 0), np.minimum(c + reach + 1, image.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    planes = {"axial": (0, (1, 2)), "coronal": (1, (0, 2)), "sagittal": (2, (0, 1))}
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.7))
    for ax, (name, (axis, (rows, cols))) in zip(axes, planes.items()):
        index = [box[0], box[1], box[2]]
        index[axis] = c[axis]
        extent = (0, (hi[cols] - lo[cols]) * spacing_zyx[cols], (hi[rows] - lo[rows]) * spacing_zyx[rows], 0)
        flip = slice(None, None, -1 if rows == 0 else 1)   # head up in coronal and sagittal views
        ax.imshow(image[tuple(index)][flip], cmap="gray", vmin=LUNG_WINDOW[0], vmax=LUNG_WINDOW[1], extent=extent)
        cut = mask[tuple(index)][flip]
        row = (hi[rows] - 1 - c[rows]) if rows == 0 else (c[rows] - lo[rows])
        if cut.any():
            ax.contour(cut.astype(float), levels=[0.5], colors=["red"], linewidths=1.0, extent=extent,
                       origin="upper")
        else:
            ax.plot((c[cols] - lo[cols] + 0.5) * spacing_zyx[cols], (row + 0.5) * spacing_zyx[rows],
                    marker="+", color="red", ms=12)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()
