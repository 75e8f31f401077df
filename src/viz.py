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


def finding_views(image: np.ndarray, labels: np.ndarray, label: int, centre_zyx, spacing_zyx, half_mm: float,
                  panel_px: int = 220) -> bytes:
    """PNG of one finding: axial, coronal and sagittal planes through ``centre_zyx`` (voxel),
    ``half_mm`` either side, in square millimetres (thick slices are not squeezed), head up,
    lung window, the outline of ``labels == label`` in red (a cross at the centre when the
    finding has no mask there). Drawn with PIL, not matplotlib: ~100x faster, and a report
    renders ten of these per scan."""
    import io

    from PIL import Image, ImageDraw
    from skimage.segmentation import find_boundaries
    spacing = np.asarray(spacing_zyx, dtype=float)
    c = np.clip(np.rint(centre_zyx).astype(int), 0, np.asarray(image.shape) - 1)
    reach = np.maximum(np.ceil(half_mm / spacing).astype(int), 2)
    lo, hi = np.maximum(c - reach, 0), np.minimum(c + reach + 1, image.shape)
    panels = []
    for name, axis, (rows, cols) in (("axial", 0, (1, 2)), ("coronal", 1, (0, 2)), ("sagittal", 2, (0, 1))):
        index = [slice(a, b) for a, b in zip(lo, hi)]
        index[axis] = c[axis]
        flip = slice(None, None, -1 if rows == 0 else 1)   # voxel z grows towards the head
        plane = image[tuple(index)][flip].astype(np.float32)
        cut = (labels[tuple(index)] == label)[flip]
        extent_mm = np.array(plane.shape) * spacing[[rows, cols]]
        size = tuple(int(v) for v in np.maximum(np.rint(extent_mm / extent_mm.max() * panel_px), 1)[::-1])
        grey = np.clip((plane - LUNG_WINDOW[0]) / (LUNG_WINDOW[1] - LUNG_WINDOW[0]) * 255, 0, 255).astype(np.uint8)
        rgb = np.asarray(Image.fromarray(grey).resize(size, Image.BILINEAR).convert("RGB")).copy()
        if cut.any():
            big = np.asarray(Image.fromarray(cut.astype(np.uint8)).resize(size, Image.NEAREST)).astype(bool)
            rgb[find_boundaries(big, mode="inner")] = (255, 40, 40)
        panel = Image.fromarray(rgb)
        draw = ImageDraw.Draw(panel)
        if not cut.any():
            row = (hi[rows] - 1 - c[rows]) if rows == 0 else (c[rows] - lo[rows])
            x, y = ((c[cols] - lo[cols] + 0.5) / plane.shape[1] * size[0], (row + 0.5) / plane.shape[0] * size[1])
            draw.line([(x - 8, y), (x + 8, y)], fill=(255, 40, 40))
            draw.line([(x, y - 8), (x, y + 8)], fill=(255, 40, 40))
        draw.text((4, 2), name, fill=(255, 255, 0))
        panels.append(panel)
    canvas = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), max(p.height for p in panels)),
                       "white")
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + 8
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
