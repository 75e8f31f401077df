"""report.html: what ``infer.py`` found, for a person to look at. One self-contained file
(PNG views embedded), in both modes and with any model: a summary table of every finding
by probability, then a section per scan with each finding's axial, coronal and sagittal
views (mask outline), its measurements, texture estimate and Lung-RADS size category."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from src.utils import atomic_write_text
from src.viz import finding_views

MIN_VIEW_HALF_MM = 20.0     # a view shows at least 20 mm around the centre ...
VIEW_DIAMETERS = 1.5        # ... and 1.5 diameters, so a large nodule's edge is in it
MAX_VIEW_SIZE_MM = 40.0     # a long vessel-like mask would zoom out to the whole chest


@dataclass
class ScanSection:
    seriesuid: str
    image_path: str
    rows: list[dict]             # the findings shown
    total: int                   # the scan's findings in nodules.csv
    views: dict[int, bytes] = field(default_factory=dict)   # nodule_id -> PNG


def scan_section(scan, labels: np.ndarray, table: pd.DataFrame, max_findings: int) -> ScanSection:
    """The views of a scan's ``max_findings`` most probable findings (rendered while the
    scan is in memory; the report is written after the last scan)."""
    shown = table.sort_values("probability", ascending=False, kind="stable").head(max_findings)
    section = ScanSection(scan.seriesuid, str(scan.record.image_path), shown.to_dict("records"), len(table))
    spacing = np.asarray(scan.geometry.spacing_zyx, dtype=float)
    boxes = ndimage.find_objects(labels)
    for row in section.rows:
        nid = int(row["nodule_id"])
        box = boxes[nid - 1] if nid <= len(boxes) else None
        # the mask's centre, else the finding's (a candidate without a mask), else the given one
        points = [np.array([row.get(f"{prefix}coord{axis}", np.nan) for axis in "XYZ"], float)
                  for prefix in ("", "given_")]
        if box is not None:
            centre = np.argwhere(labels[box] == nid).mean(0) + [s.start for s in box]
        elif any(np.isfinite(p).all() for p in points):
            centre = scan.geometry.world_to_voxel(next(p for p in points if np.isfinite(p).all()))
        else:
            continue
        size = row.get("long_axis_mm")
        size = size if size is not None and np.isfinite(size) else row.get("diameter_mm", 10.0) or 10.0
        section.views[nid] = finding_views(scan.image, labels, nid, centre, spacing,
                                           max(MIN_VIEW_HALF_MM, VIEW_DIAMETERS * min(float(size), MAX_VIEW_SIZE_MM)))
    return section


def _number(value, digits: int = 1) -> str:
    return "" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


COLUMNS = [("probability", "probability", 3), ("long_axis_mm", "long axis (mm)", 1),
           ("diameter_mm", "eq. diameter (mm)", 1), ("volume_mm3", "volume (mm³)", 0), ("mean_hu", "mean HU", 0),
           ("texture_estimate", "texture", None), ("lung_rads", "Lung-RADS (size)", None),
           ("source", "source", None)]   # "given sphere": nothing found at the coordinates


def _cell(row: dict, key: str, digits: int | None) -> str:
    value = row.get(key)
    return f"<td>{html.escape(str(value or ''))}</td>" if digits is None else f"<td>{_number(value, digits)}</td>"


def _cells(row: dict) -> str:
    return "".join(_cell(row, key, digits) for key, _, digits in COLUMNS)


def write_report(sections: list[ScanSection], path: Path, run_info: dict, failures: list[str]) -> Path:
    rows = sorted(((s, r) for s in sections for r in s.rows), key=lambda sr: -float(sr[1].get("probability") or 0))
    head = "".join(f"<th>{label}</th>" for _, label, _ in COLUMNS)
    summary = "".join(
        f"<tr><td><a href='#{html.escape(s.seriesuid)}'>{html.escape(s.seriesuid)}</a></td>"
        f"<td><a href='#{html.escape(s.seriesuid)}-{int(r['nodule_id'])}'>{int(r['nodule_id'])}</a></td>"
        f"{_cells(r)}<td>{_number(r.get('coordX'))}, {_number(r.get('coordY'))}, {_number(r.get('coordZ'))}</td></tr>"
        for s, r in rows)
    parts = [f"""<!doctype html><html><head><meta charset="utf-8"><title>nodule-kd report</title><style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}} th{{background:#f2f2f2}}
td:first-child,th:first-child{{text-align:left}} .finding{{display:flex;gap:1em;align-items:center;margin:.6em 0;
border-top:1px solid #ddd;padding-top:.6em}} .meta{{color:#666;font-size:12px}} img{{max-width:600px}}
</style></head><body><h1>Lung nodule report</h1>
<p class="meta">{html.escape(run_info_line(run_info))}</p>
<p class="meta">Research software, not a medical device. Texture is estimated from the mask's HU; the Lung-RADS
category uses size (volume) only, as at a baseline screen, without growth or morphology.</p>
<h2>Findings by probability ({len(rows)} shown of {sum(s.total for s in sections)} in nodules.csv,
{len(sections)} scan(s))</h2>
<table><tr><th>seriesuid</th><th>#</th>{head}<th>centre x, y, z (mm)</th></tr>{summary}</table>"""]
    if failures:
        parts.append("<h2>Failed inputs</h2><ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in failures) + "</ul>")
    for s in sections:
        parts.append(f"<h2 id='{html.escape(s.seriesuid)}'>{html.escape(s.seriesuid)}</h2>"
                     f"<p class='meta'>{html.escape(s.image_path)}; {len(s.rows)} of {s.total} finding(s) shown</p>")
        if not s.rows:
            parts.append("<p>No findings.</p>")
        for r in s.rows:
            nid = int(r["nodule_id"])
            image = (f"<img alt='finding {nid}' src='data:image/png;base64,{base64.b64encode(s.views[nid]).decode()}'>"
                     if nid in s.views else "<p>(no view)</p>")
            facts = "".join(f"<tr><th>{label}</th>{_cell(r, key, digits)}</tr>" for key, label, digits in COLUMNS)
            parts.append(f"<div class='finding' id='{html.escape(s.seriesuid)}-{nid}'>{image}"
                         f"<table><tr><th>finding</th><td>{nid}</td></tr>{facts}</table></div>")
    parts.append("</body></html>")
    atomic_write_text(path, "\n".join(parts))
    return path


def run_info_line(info: dict) -> str:
    return "; ".join(f"{k}: {v}" for k, v in info.items() if v not in (None, ""))
