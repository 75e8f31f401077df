"""The built-in dataset: real LIDC nodules in synthetic CT, written in LUNA16 layout."""
import hashlib

import numpy as np
import pandas as pd
import pytest

from src.config import PhantomConfig
from src.data.groups import ATTACHMENT_LABELS
from src.data.luna16 import read_luna16
from src.phantom.dataset import (NONSOLID_TEXTURE, annotated_in_window, clear_out_dir, generate_dataset,
                                 plan_findings, realised_summary, select_scans)
from src.phantom.writer import findings_in_window, is_annotated

CFG = PhantomConfig(n_scans=3, seed=5, max_slices=40, workers=1)      # one of the three has no nodule


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    generate_dataset(CFG, out)
    return out


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_luna16_layout(phantom):
    for name in ("annotations.csv", "annotations_excluded.csv", "candidates_V2.csv", "scans.csv", "nodules.csv"):
        assert (phantom / name).is_file(), name
    ann = pd.read_csv(phantom / "annotations.csv")
    assert list(ann.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    scans = pd.read_csv(phantom / "scans.csv")
    assert len(scans) == 3 and scans["patient_id"].str.startswith("LIDC-IDRI-").all()
    for uid in scans["seriesuid"]:
        assert len(list(phantom.glob(f"subset*/{uid}.mhd"))) == 1 and len(list(phantom.glob(f"subset*/{uid}.raw"))) == 1
        for folder in ("seg-lungs-LUNA16", "masks", "masks/readers"):
            assert (phantom / folder / f"{uid}.mhd").is_file()
    cand = pd.read_csv(phantom / "candidates_V2.csv")
    assert set(cand["class"]) == {0, 1} and (cand["class"] == 1).sum() == len(ann)
    assert (ann["diameter_mm"] >= 3).all()


def test_a_third_of_the_scans_hold_no_annotated_nodule(phantom):
    scans = pd.read_csv(phantom / "scans.csv")
    ann = pd.read_csv(phantom / "annotations.csv")
    counts = ann["seriesuid"].value_counts()
    assert (scans["n_annotated"] == scans["seriesuid"].map(counts).fillna(0)).all()
    assert (scans["n_annotated"] == 0).sum() == round(CFG.empty_scan_fraction * CFG.n_scans) == 1
    empty = [r for r in read_luna16(phantom) if r.nodules.empty]
    assert len(empty) == 1
    scan = empty[0].load()
    assert scan.nodules == [] and scan.fine_mask.max() == 0 and scan.lung_mask.any()


def test_round_trip_coordinates_in_masks_and_contrast(phantom):
    ann = pd.read_csv(phantom / "annotations.csv")
    seen = 0
    for record in read_luna16(phantom):
        scan = record.load()
        g = scan.geometry
        assert scan.image.dtype == np.int16 and scan.image.shape[1:] == (512, 512)
        assert g.shape_zyx[0] <= CFG.max_slices
        assert all(n.fine_label > 0 and not n.from_mask for n in scan.nodules), "every annotation has its mask"
        assert all(n.attachment in ATTACHMENT_LABELS[:3] for n in scan.nodules)
        for nodule in scan.nodules:
            seen += 1
            z, y, x = np.rint(g.world_to_voxel(nodule.center_xyz)).astype(int)
            truth = scan.fine_mask == nodule.fine_label
            assert truth[z, y, x] or truth[max(z - 1, 0):z + 2, y - 1:y + 2, x - 1:x + 2].any(), \
                "world centre in (or by) its own mask"
            assert scan.lung_mask[truth].all(), "nodules lie in the lungs"
        if scan.nodules:                     # reader bit masks: agreement measured on the same nodules
            assert scan.reader_bits is not None and scan.reader_bits.max() > 0
    assert seen == len(ann)


def test_every_draw_is_recorded_per_nodule(phantom):
    nodules = pd.read_csv(phantom / "nodules.csv")
    for column in ("attachment", "planned_attachment", "density", "calcification", "pleural_contact",
                   "vessel_contact", "edge_contrast", "render_reader", "edge_blur_mm", "texture", "margin"):
        assert column in nodules.columns and nodules[column].notna().all(), column
    assert (nodules["attachment"] == nodules["planned_attachment"]).mean() >= 0.8
    scans = pd.read_csv(phantom / "scans.csv")
    for column in ("profile", "noise_sd_hu", "emphysema_volume", "dependent_hu", "plaques", "micronodules"):
        assert column in scans.columns, column


def test_attachment_classes_are_dealt_exactly():
    cfg = PhantomConfig(n_scans=5, seed=2, max_slices=60, juxta_pleural_fraction=0.4, juxta_vascular_fraction=0.2,
                        nonsolid_fraction=0.0)
    scans = select_scans(cfg)
    plans = plan_findings(scans, cfg)
    annotated = [p.attachment for scan, ps in zip(scans, plans)
                 for n, p in zip(findings_in_window(scan, cfg), ps) if is_annotated(n, cfg)]
    n = len(annotated)
    assert n >= 4 and [len(p) for p in plans] == [len(findings_in_window(s, cfg)) for s in scans]
    assert annotated.count("juxta-pleural") == round(0.4 * n)
    assert annotated.count("juxta-vascular") == round(0.2 * n)
    assert plans == plan_findings(scans, cfg)                         # seeded


def test_realised_summary_counts_what_was_written(phantom):
    table = realised_summary(phantom, CFG)
    nodules = pd.read_csv(phantom / "nodules.csv")
    attachment = table[table["quantity"] == "attachment"].set_index("value")["count"]
    assert attachment.to_dict() == nodules["attachment"].value_counts().to_dict()
    empty = table[(table["quantity"] == "scans")]
    assert empty["count"].item() == 1 and empty["target_low"].item() == CFG.empty_scan_fraction
    assert table.loc[table["value"] == "juxta-pleural", "target_low"].tolist() in ([], [CFG.juxta_pleural_fraction])


def test_same_command_same_bytes(phantom, tmp_path):
    generate_dataset(CFG, tmp_path / "again")
    assert _digest(phantom) == _digest(tmp_path / "again")


def test_refuses_to_clear_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "real_luna").mkdir()
    (tmp_path / "real_luna" / "annotations.csv").write_text("seriesuid\n")
    with pytest.raises(FileExistsError, match="not made by make_phantom.py"):
        clear_out_dir(tmp_path / "real_luna")


def test_a_generation_cut_short_is_cleared_by_the_rerun(tmp_path):
    """Writing a set takes minutes to an hour: a crash must leave a folder the rerun may
    clear, not one it refuses as somebody else's."""
    from src.phantom.dataset import is_current

    out = tmp_path / "phantom"
    clear_out_dir(out)                                         # as every caller does before generating
    (out / "subset0").mkdir()
    (out / "subset0" / "1.2.3.mhd").write_text("half written")  # then the crash
    assert not is_current(CFG, out)
    clear_out_dir(out)
    assert [p.name for p in out.iterdir()] == ["phantom.json"] and not is_current(CFG, out)


def test_renderer_shifts_reach_the_written_scans(tmp_path):
    """The knobs the shifted benchmark sets use: kernel (noise), slice thickness."""
    cfg = PhantomConfig(n_scans=1, seed=5, max_slices=24, workers=1, profiles=("ultralow_dose",),
                        min_slice_thickness_mm=2.0, nonsolid_fraction=0.0)
    scans = generate_dataset(cfg, tmp_path)
    assert scans["profile"].tolist() == ["ultralow_dose"] and scans["noise_sd_hu"].item() == 70.0
    assert scans["slice_thickness_mm"].item() >= 2.0
    with pytest.raises(Exception, match="unknown"):
        generate_dataset(PhantomConfig(n_scans=1, workers=1, profiles=("nope",)), tmp_path / "x")


def test_texture_mix_takes_non_solid_nodules_first():
    def share(cfg):
        nodules = [n for s in select_scans(cfg) for n in annotated_in_window(s, cfg)]
        return np.mean([n.texture <= NONSOLID_TEXTURE for n in nodules])

    assert share(PhantomConfig(n_scans=4, seed=6, nonsolid_fraction=0.0, empty_scan_fraction=0.0)) < 0.2
    assert share(PhantomConfig(n_scans=4, seed=6, nonsolid_fraction=0.5, empty_scan_fraction=0.0)) >= 0.4


def test_softer_edges_blur_the_nodule_boundary():
    """``edge_mm`` spreads the nodule's partial-volume edge: more voxels outside the
    physical shape take part of its density."""
    from src.phantom.nodules import NoduleSpec, build_body

    z, y, x = np.indices((9, 17, 17))
    ball = (z - 4) ** 2 + (y - 8) ** 2 + (x - 8) ** 2 <= 16
    spec = NoduleSpec(ball[None])

    def raised(edge_mm):
        body = build_body(spec, np.ones(3), edge_mm, 0.0, np.random.default_rng(0))
        return int(((body.alpha > 0.05) & ~body.body).sum())

    assert raised(1.5) > raised(0.4) >= 0 and raised(1.5) > 50


@pytest.mark.parametrize("bad, key", [(dict(n_scans=0), "n_scans"), (dict(n_scans=-2), "n_scans"),
                                      (dict(juxta_pleural_fraction=1.5), "juxta_pleural_fraction"),
                                      (dict(juxta_pleural_fraction=0.7, juxta_vascular_fraction=0.5), "juxta_vascular"),
                                      (dict(empty_scan_fraction=1.0), "empty_scan_fraction"),
                                      (dict(edge_mm=-1.0), "edge_mm"), (dict(profiles=("nope",)), "profiles")])
def test_out_of_range_settings_are_one_config_error_before_any_work(bad, key):
    from src.errors import ConfigError
    with pytest.raises(ConfigError, match=key):
        select_scans(PhantomConfig(**bad))


def test_edge_contrast_read_back_from_the_written_images_matches_the_renderer(phantom):
    """bench/phantom.py measures any LUNA16-layout set the way the renderer records it."""
    from src.bench.phantom import measured_edge_contrast

    nodules = pd.read_csv(phantom / "nodules.csv")
    measured = measured_edge_contrast(phantom)
    assert len(measured) == len(nodules)
    both = np.isfinite(measured["edge_contrast"].to_numpy()) & np.isfinite(nodules["edge_contrast"].to_numpy())
    assert both.any()
    assert np.abs(measured["edge_contrast"].to_numpy()[both] - nodules["edge_contrast"].to_numpy()[both]).max() < 0.15


def test_tiny_scans_never_draw_one_nodule_into_another():
    """The tests' own dataset: two nodules that touched would be one blob in the image and
    two labels cut apart in the mask (10 of 200 scans did)."""
    from src.phantom.tiny import TINY_SPACING_XYZ, tiny_scan
    rng = np.random.default_rng(0)
    mm = np.array(TINY_SPACING_XYZ[::-1])
    for _ in range(60):
        _, labels, _, nodules, _ = tiny_scan(rng, n_nodules=2)
        (c1, r1), (c2, r2) = nodules
        assert np.linalg.norm((c1 - c2) * mm) > r1 + r2
        assert set(np.unique(labels)) == {0, 1, 2}


def test_the_last_resort_placement_keeps_nodules_apart_and_in_the_lungs():
    """Two large nodules in a thin volume where nothing fits: both land on lung voxels, and
    not in each other (before, both went to the one deepest point)."""
    from src.phantom.nodules import NoduleSpec
    from src.phantom.render import render_ct
    spacing = np.array([2.5, 1.0, 1.0])

    def ball(r_mm):
        n = np.ceil(r_mm / spacing).astype(int)
        z, y, x = np.indices(2 * n + 1)
        inside = ((z - n[0]) * spacing[0]) ** 2 + ((y - n[1]) * spacing[1]) ** 2 + ((x - n[2]) * spacing[2]) ** 2
        return (inside <= r_mm ** 2)[None].repeat(3, 0)

    ct = render_ct((8, 160, 160), tuple(spacing), 2.5, [NoduleSpec(ball(12.0)), NoduleSpec(ball(11.0))],
                   PhantomConfig(), np.random.default_rng(0))
    voxels = []
    for nodule in ct.nodules:
        assert nodule.placement.record.get("fallback") == "deepest lung point"
        centre = np.clip(np.rint(nodule.centre_zyx / spacing).astype(int), 0, np.array(ct.hu.shape) - 1)
        assert ct.lung_labels[tuple(centre)] in (3, 4), "placed in a lung"
        voxels.append({tuple(v) for v in np.argwhere(nodule.body.reader_masks.mean(0) >= 0.5) + nodule.placement.offset})
    assert not voxels[0] & voxels[1]


def test_reader_masks_leave_out_the_contour_pixels_as_pylidc_does():
    """LIDC contours trace the pixels just outside the nodule: pylidc's ``boolean_mask``
    leaves them out, and filled polygons alone are ~27 % larger (Dice ~0.88)."""
    from src.phantom.lidc import _pylidc, _rasterise

    pl = _pylidc()
    for annotation in pl.query(pl.Annotation).filter(pl.Annotation.id.in_([1, 77, 500, 2024, 4242, 6000])):
        zvals = np.asarray(annotation.scan.slice_zvals, dtype=float)
        ours, box = _rasterise(annotation, {round(float(z), 2): k for k, z in enumerate(zvals)})
        bb = annotation.bbox_matrix()                      # (i = y, j = x, k = slice) rows: start, stop
        theirs = np.zeros((len(zvals), 512, 512), dtype=bool)
        theirs[bb[2, 0]:bb[2, 1] + 1, bb[0, 0]:bb[0, 1] + 1, bb[1, 0]:bb[1, 1] + 1] = \
            np.moveaxis(annotation.boolean_mask(), 2, 0)
        placed = np.zeros_like(theirs)
        placed[box] = ours
        # skimage and matplotlib may disagree on a pixel whose centre lies on the polygon
        dice = 2 * (placed & theirs).sum() / (placed.sum() + theirs.sum())
        assert dice >= 0.995, (annotation.id, dice)


def test_air_makes_a_solid_nodule_cavitary_and_leaves_ground_glass_as_it_is():
    from src.phantom.lidc import LidcNodule, LidcScan

    def nodule(z0: int, texture: float) -> LidcNodule:
        masks = np.zeros((3, 6, 16, 16), dtype=bool)
        masks[:, 1:5, 3:13, 3:13] = True
        return LidcNodule(masks, (slice(z0, z0 + 6), slice(200, 216), slice(200, 216)), texture=texture,
                          malignancy=3.0, diameter_mm=12.0, calcification=(6, 6, 6), internal_structure=(4, 4, 4))

    scan = LidcScan("1.2.3", "LIDC-IDRI-9999", 1, 0.7, 1.25, 1.25, np.arange(60) * 1.25,
                    [nodule(10, texture=1.5), nodule(30, texture=5.0)])
    cfg = PhantomConfig(n_scans=1, max_slices=60, cavitary_fraction=0.0)
    assert [plan.cavitary for plan in plan_findings([scan], cfg)[0]] == [False, True]


def test_every_nodule_records_its_gap_to_the_wall(phantom):
    """``wall_distance_mm``: juxta-pleural nodules touch, the others keep clear, and
    bench/phantom.py tables it for the published 5-7 mm (the depth draw itself is tested in
    test_render.py)."""
    nodules = pd.read_csv(phantom / "nodules.csv")
    gap = nodules.set_index("attachment")["wall_distance_mm"]
    assert nodules["wall_distance_mm"].notna().all()
    assert gap.drop(["juxta-pleural"], errors="ignore").min() >= 1.0        # clear of the wall
    if "juxta-pleural" in gap.index:
        assert np.max(gap.loc[["juxta-pleural"]]) <= 1.5                    # touching: within a voxel or two
    from src.bench.phantom import wall_distance_table
    table = wall_distance_table(nodules).set_index("attachment")
    assert table.loc["all", "n"] == len(nodules) and np.isclose(table.loc["all", "mean"], gap.mean())
    assert set(table.index) == {*nodules["attachment"], "all"}
