"""The built-in dataset: real LIDC nodules in synthetic CT, written in LUNA16 layout."""
import hashlib

import numpy as np
import pandas as pd
import pytest

from src.config import PhantomConfig
from src.data.luna16 import read_luna16
from src.phantom.writer import clear_out_dir, generate_dataset

CFG = PhantomConfig(n_scans=2, seed=5, max_slices=40, workers=1)


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
    assert len(scans) == 2 and scans["patient_id"].str.startswith("LIDC-IDRI-").all()
    for uid in scans["seriesuid"]:
        assert len(list(phantom.glob(f"subset*/{uid}.mhd"))) == 1 and len(list(phantom.glob(f"subset*/{uid}.raw"))) == 1
        for folder in ("seg-lungs-LUNA16", "masks", "masks/readers"):
            assert (phantom / folder / f"{uid}.mhd").is_file()
    cand = pd.read_csv(phantom / "candidates_V2.csv")
    assert set(cand["class"]) == {0, 1} and (cand["class"] == 1).sum() == len(ann)
    assert (ann["diameter_mm"] >= 3).all()


def test_round_trip_coordinates_in_masks_and_contrast(phantom):
    ann = pd.read_csv(phantom / "annotations.csv")
    records = read_luna16(phantom)
    seen = 0
    for record in records:
        scan = record.load()
        g = scan.geometry
        assert scan.image.dtype == np.int16 and scan.image.shape[1:] == (512, 512)
        assert g.shape_zyx[0] <= CFG.max_slices
        assert all(n.fine_label > 0 and not n.from_mask for n in scan.nodules), "every annotation has its mask"
        for nodule in scan.nodules:
            seen += 1
            z, y, x = np.rint(g.world_to_voxel(nodule.center_xyz)).astype(int)
            assert scan.fine_mask[z, y, x] == nodule.fine_label, "world centre inside its own mask"
            assert scan.lung_mask[z, y, x], "nodules lie in the lungs"
            inside = scan.image[scan.fine_mask == nodule.fine_label].mean()
            r = int(np.ceil(nodule.diameter_mm / g.spacing_xyz[0]))
            box = (slice(z, z + 1), slice(max(y - 2 * r, 0), y + 2 * r), slice(max(x - 2 * r, 0), x + 2 * r))
            shell = scan.lung_mask[box] & (scan.fine_mask[box] == 0) & (scan.image[box] < -500)
            if nodule.texture >= 4:
                assert inside - scan.image[box][shell].mean() > 300, "solid nodule brighter than lung"
        # reader bit masks: agreement measured on the same nodules
        assert scan.reader_bits is not None and scan.reader_bits.max() > 0
    assert seen == len(ann)


def test_same_command_same_bytes(phantom, tmp_path):
    generate_dataset(CFG, tmp_path / "again")
    assert _digest(phantom) == _digest(tmp_path / "again")


def test_refuses_to_clear_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "real_luna").mkdir()
    (tmp_path / "real_luna" / "annotations.csv").write_text("seriesuid\n")
    with pytest.raises(FileExistsError, match="not made by make_phantom.py"):
        clear_out_dir(tmp_path / "real_luna")


def test_renderer_shifts_reach_the_written_scans(tmp_path):
    """The knobs the shifted benchmark sets use: scanner profile (noise), slice thickness."""
    cfg = PhantomConfig(n_scans=1, seed=5, max_slices=24, workers=1, profiles=("ultralow_dose",),
                        min_slice_thickness_mm=2.0)
    scans = generate_dataset(cfg, tmp_path)
    assert scans["profile"].tolist() == ["ultralow_dose"] and scans["noise_sd_hu"].item() == 70.0
    assert scans["slice_thickness_mm"].item() >= 2.0
    with pytest.raises(Exception, match="unknown"):
        generate_dataset(PhantomConfig(n_scans=1, workers=1, profiles=("nope",)), tmp_path / "x")


def test_texture_mix_takes_non_solid_nodules_first():
    from src.phantom.writer import NONSOLID_TEXTURE, annotated_in_window, select_scans

    def share(cfg):
        nodules = [n for s in select_scans(cfg) for n in annotated_in_window(s, cfg)]
        return np.mean([n.texture <= NONSOLID_TEXTURE for n in nodules])

    assert share(PhantomConfig(n_scans=6, seed=6)) < 0.2            # LIDC's own mix, by chance low here
    assert share(PhantomConfig(n_scans=6, seed=6, nonsolid_fraction=0.5)) >= 0.5


def test_softer_edges_blur_the_nodule_boundary():
    """``edge_mm`` spreads the nodule's partial-volume edge: more lung voxels outside the
    marked ball take part of its density."""
    from scipy import ndimage

    from src.phantom.anatomy import NoduleSpec, _Grid, _paint_nodules

    z, y, x = np.indices((9, 17, 17))
    ball = (z - 4) ** 2 + (y - 8) ** 2 + (x - 8) ** 2 <= 16
    spec = NoduleSpec(center_zyx=np.array([20.0, 40.0, 40.0]), radius_mm=4.0, texture=5,
                      fraction=ball.astype(np.float32), offset_zyx=(16, 32, 32))
    grid = _Grid((40, 80, 80), np.ones(3))
    outside = np.ones(grid.shape, bool)
    outside[16:25, 32:49, 32:49] = ~ndimage.binary_dilation(ball)

    def raised(edge_mm):
        hu = np.full(grid.shape, -850.0, np.float32)
        _paint_nodules([spec], grid, hu, np.random.default_rng(0), edge_mm)
        return int((hu[outside] > -800).sum())

    assert raised(1.5) > raised(0.4) >= 0 and raised(1.5) > 50
