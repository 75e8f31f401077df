"""The classical blob detector (src.data.blobs) and its merge with the map's peaks."""
import numpy as np
import pytest

from src.config import CacheConfig, DetectConfig
from src.data.blobs import find_blobs
from src.data.geometry import Geometry
from src.data.scan import Scan
from src.predict.detect import candidates
from src.predict.segment import ModelVolume

SHAPE = (48, 80, 80)
SPACING_XYZ = (0.75, 0.75, 1.25)     # model space: thicker slices than pixels
LUNG_HU = -850


def ball(geometry, centre_xyz, diameter_mm):
    zyx = np.indices(geometry.shape_zyx).reshape(3, -1).T
    d = np.linalg.norm(geometry.voxel_to_world(zyx) - np.asarray(centre_xyz), axis=1)
    return (d <= diameter_mm / 2).reshape(geometry.shape_zyx)


@pytest.fixture(scope="module")
def chest():
    """Lung with a solid 8 mm nodule, a ground-glass 10 mm nodule and a 3 mm vessel along x."""
    geometry = Geometry.axis_aligned((0.0, 0.0, 0.0), SPACING_XYZ, SHAPE)
    image = np.full(SHAPE, LUNG_HU, np.int16)
    z, y = np.indices(SHAPE[:2])
    vessel_zy = (z - 36) ** 2 * 1.25 ** 2 + (y - 20) ** 2 * 0.75 ** 2 <= 1.5 ** 2
    image[vessel_zy] = 40
    solid, ground_glass = (20.0, 30.0, 20.0), (40.0, 40.0, 40.0)   # world x, y, z (mm)
    image[ball(geometry, solid, 8.0)] = 40
    image[ball(geometry, ground_glass, 10.0)] = -600
    return geometry, image, solid, ground_glass


def test_blobs_find_solid_and_ground_glass_nodules_before_vessels(chest):
    geometry, image, solid, ground_glass = chest
    blobs = find_blobs(image, geometry, np.ones(SHAPE, bool), max_blobs=10, min_response=50.0)
    first = blobs.iloc[0]
    assert np.linalg.norm(first[["coordX", "coordY", "coordZ"]].to_numpy(float) - solid) <= 1.5
    assert 5.0 <= first["diameter_mm"] <= 12.0
    d_ggn = np.linalg.norm(blobs[["coordX", "coordY", "coordZ"]].to_numpy(float) - ground_glass, axis=1)
    assert d_ggn.min() <= 2.0, "the faint nodule is a blob too"
    assert blobs["blob_response"].is_monotonic_decreasing
    on_vessel = np.abs(blobs["coordZ"] - 36 * 1.25) <= 2.5
    assert (blobs.loc[on_vessel, "blob_response"] < first["blob_response"] / 2).all(), "a tube is weaker than a ball"


def test_blobs_only_inside_the_region(chest):
    geometry, image, _, _ = chest
    region = np.zeros(SHAPE, bool)
    region[:, :, 40:] = True          # x >= 30 mm: the solid nodule (x = 20) is outside
    blobs = find_blobs(image, geometry, region, max_blobs=10, min_response=50.0)
    assert len(blobs) and (blobs["coordX"] >= 30.0 - 0.75).all()
    assert find_blobs(image, geometry, np.zeros(SHAPE, bool), 10, 50.0).empty
    assert find_blobs(np.full(SHAPE, LUNG_HU, np.int16), geometry, region, 10, 50.0).empty, "flat lung: none"


def test_candidates_merge_blobs_with_the_maps_peaks(chest):
    geometry, image, solid, ground_glass = chest
    lung = np.ones(SHAPE, bool)
    scan = Scan(None, image, geometry, [], None, lung, None, np.zeros((0, 4)), np.zeros((0, 3)))
    mv = ModelVolume(image, geometry, geometry, CacheConfig(), scan=scan)
    prob = np.where(ball(geometry, solid, 8.0), 0.9, 0.0).astype(np.float32)   # the map sees only the solid one
    cfg = DetectConfig(candidate_threshold=0.5, blob_candidates=10)
    _, _, table = candidates(mv, prob, cfg, 0.5)
    both = table[table["source"] == "both"]
    assert len(both) == 1 and both["seg_probability"].iloc[0] == pytest.approx(0.9)
    assert np.isfinite(both["blob_response"].iloc[0])
    blob_only = table[table["source"] == "blob"]
    d = np.linalg.norm(blob_only[["coordX", "coordY", "coordZ"]].to_numpy(float) - ground_glass, axis=1)
    assert d.min() <= 2.0 and (blob_only["seg_probability"] == 0).all()
    assert table["nodule_id"].tolist() == list(range(1, len(table) + 1))
    assert len(candidates(mv, prob, DetectConfig(candidate_threshold=0.5, blob_candidates=0), 0.5)[2]) == 1
    capped = candidates(mv, prob, DetectConfig(candidate_threshold=0.5, blob_candidates=10, max_candidates=2), 0.5)[2]
    assert len(capped) == 2


def test_a_blob_on_a_peak_that_the_cap_would_cut_lifts_the_peak():
    """Every blob-found candidate survives the cap: a blob on the weakest peak keeps that
    peak (source both), a lone blob is kept, the strongest map-only peaks fill the rest."""
    import pandas as pd
    from src.predict.detect import merge_sources
    peaks = pd.DataFrame({"coordX": [0.0, 20.0, 40.0, 60.0], "coordY": 0.0, "coordZ": 0.0,
                          "seg_probability": [0.9, 0.8, 0.7, 0.1], "source": "map"})
    blobs = pd.DataFrame({"coordX": [61.0, -50.0], "coordY": 0.0, "coordZ": 0.0, "seg_probability": [0.1, 0.0],
                          "source": "blob", "blob_response": [300.0, 200.0]})
    merged = merge_sources(peaks, blobs, max_candidates=3, separation_mm=6.0)
    assert merged["coordX"].tolist() == [0.0, 60.0, -50.0]
    assert merged["source"].tolist() == ["map", "both", "blob"]
    assert merged["blob_response"].tolist()[1:] == [300.0, 200.0]
