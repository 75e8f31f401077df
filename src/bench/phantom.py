"""The built-in dataset's own benchmark: is it what it promises?

On a default set (``phantom`` section of the config, ``n_scans`` scans) it reports:
* the realised share of each attachment, texture and density class among the annotated
  nodules and of scans without one, beside the target (config fraction or published range);
* the realised contact of attached nodules (share of the consensus surface within 1 mm of
  wall tissue or of a vessel);
* how far nodules sit from the pleura (consensus surface to the nearest wall tissue), by
  class and over all, beside the published mean;
* where the consensus edge sits between nodule and surroundings (``edge_contrast``): its
  median and 10-90 % range, overall and by class, as recorded by the renderer (noise-free)
  and as measured on the written images, which also works on any other LUNA16-layout set
  with masks (an older built-in set, say);
* generation time per scan;
* preview galleries (axial and coronal) of each attachment class, density class and kernel.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from src.bench.report import markdown
from src.config import PhantomConfig
from src.phantom.dataset import GENERATOR, clear_out_dir, generate_dataset, is_current, realised_summary, stamp
from src.phantom.gallery import gallery, pick
from src.phantom.nodules import edge_contrast
from src.phantom.shapes import placed_box
from src.utils import atomic_to_csv, atomic_write_text, progress

TOLERANCE = 0.05                     # realised shares within 5 points of their targets
# Mean nodule-to-pleura distance of 1,556 LIDC nodules, attached ones included: 6.56 mm
# (benign), 5.19 mm (malignant); arXiv 2106.12991, ../shared/reference/domain.md.
PUBLISHED_WALL_DISTANCE_MM = (5.0, 7.0)


def generate(cfg: PhantomConfig, data: Path) -> float:
    """The set (skipped when current); seconds of wall time per scan when it was made."""
    timing = data.parent / "generation_s_per_scan.txt"
    if not is_current(cfg, data):
        clear_out_dir(data)
        start = time.time()
        generate_dataset(cfg, data)
        atomic_write_text(timing, f"{(time.time() - start) / cfg.n_scans:.3f}\n")
        atomic_write_text(data / "phantom.json", stamp(cfg))
    return float(timing.read_text()) if timing.is_file() else float("nan")


def measured_edge_contrast(data: Path) -> pd.DataFrame:
    """edge_contrast of every annotated nodule on the written images (noise included)."""
    from src.data.luna16 import read_luna16

    rows = []
    for record in progress([r for r in read_luna16(data) if not r.nodules.empty], desc="edge contrast"):
        scan = record.load()
        for nodule in scan.nodules:
            truth = scan.fine_mask == nodule.fine_label
            box, local = placed_box(truth, np.zeros(3, dtype=int), 8, truth.shape)
            rows.append(dict(nodule_uid=nodule.nodule_uid, attachment=nodule.attachment,
                             edge_contrast=edge_contrast(scan.image[box].astype(np.float32), local, scan.lung_mask[box])))
    return pd.DataFrame(rows)


def spread(values: pd.Series) -> dict:
    v = values.dropna()
    return dict(n=len(v), median=v.median(), p10=v.quantile(0.1), p90=v.quantile(0.9))


def contact_table(nodules: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for name, column in (("juxta-pleural", "pleural_contact"), ("juxta-vascular", "vessel_contact"),
                         ("isolated", "pleural_contact"), ("isolated", "vessel_contact")):
        v = nodules.loc[nodules["attachment"] == name, column]
        rows.append(dict(attachment=name, contact=column, n=len(v), median=v.median(), minimum=v.min(),
                         share_touching=(v > 0).mean() if len(v) else np.nan))
    return pd.DataFrame(rows)


def wall_distance_table(nodules: pd.DataFrame) -> pd.DataFrame:
    """Consensus surface to the nearest wall tissue (mm), by realised class and over all."""
    groups = [*nodules.groupby("attachment")["wall_distance_mm"], ("all", nodules["wall_distance_mm"])]
    low, high = PUBLISHED_WALL_DISTANCE_MM
    return pd.DataFrame([dict(attachment=name, n=len(v), mean=v.mean(), median=v.median(), p10=v.quantile(0.1),
                              p90=v.quantile(0.9), published_mean=f"{low:g}-{high:g}" if name == "all" else "")
                         for name, v in groups])


def run_phantom_bench(cfg: PhantomConfig, out: Path, img: Path, log=print) -> str:
    """The whole report (module docstring) into ``out``, the galleries into ``img``."""
    data = out / "data"
    seconds = generate(cfg, data)
    nodules = pd.read_csv(data / "nodules.csv")
    scans = pd.read_csv(data / "scans.csv")
    summary = realised_summary(data, cfg)
    inside = (summary["share"] >= summary["target_low"] - TOLERANCE) & (summary["share"] <= summary["target_high"] + TOLERANCE)
    summary["within_5_points"] = np.where(summary["target_low"].isna(), "", np.where(inside, "yes", "NO"))
    contacts = contact_table(nodules)
    gaps = wall_distance_table(nodules)
    measured = measured_edge_contrast(data)
    levels = [dict(group="all", source="renderer (noise-free)", **spread(nodules["edge_contrast"])),
              dict(group="all", source="written images", **spread(measured["edge_contrast"]))]
    for column in ("attachment", "density"):
        for value, g in nodules.groupby(column):
            levels.append(dict(group=f"{column}: {value}", source="renderer (noise-free)", **spread(g["edge_contrast"])))
    levels = pd.DataFrame(levels)
    kernels = scans.groupby("profile")["noise_sd_hu"].agg(["size", "min", "median", "max"]).reset_index()
    for name, table in (("realised.csv", summary), ("contact.csv", contacts), ("wall_distance.csv", gaps),
                        ("edge_contrast.csv", levels),
                        ("kernels.csv", kernels)):
        atomic_to_csv(table, out / name, float_format="%.4g")

    rng = np.random.default_rng(0)
    with_profile = nodules.merge(scans[["seriesuid", "profile"]], on="seriesuid")
    figures = {
        "phantom_attachment.png": ("attachment", ["isolated", "juxta-pleural", "juxta-vascular"]),
        "phantom_density.png": ("density", ["solid", "part-solid", "ground-glass", "calcified", "cavitary"]),
        "phantom_kernels.png": ("profile", sorted(scans["profile"].unique())),
    }
    for name, (column, values) in figures.items():
        picks = pick(with_profile, column, [v for v in values if (with_profile[column] == v).any()], rng)
        gallery(data, picks, img / name, f"built-in dataset {GENERATOR.rsplit(' ', 1)[-1]} by {column}: "
                "consensus (truth) in green")
        log(f"gallery -> {img / name}")

    lines = [f"# Built-in dataset: {len(scans)} scans, {len(nodules)} annotated nodules", "",
             f"Generation: {seconds:.2f} s per scan (wall, {cfg.workers} workers, scan selection included)", "",
             "## Realised shares (annotated nodules; scans) against their targets", "", markdown(summary.round(3)), "",
             "## Contact of attached nodules (share of the consensus surface within 1 mm)", "",
             markdown(contacts.round(3)), "",
             "## Consensus surface to the nearest wall tissue (mm; voxel centres, so touching is ~1 voxel)", "",
             markdown(gaps.round(2)), "",
             "## Consensus edge level between surroundings (0) and core (1)", "", markdown(levels.round(3)), "",
             "## Kernels and noise sd (HU)", "", markdown(kernels.round(1)), ""]
    text = "\n".join(lines)
    atomic_write_text(out / "report.md", text)
    return text
