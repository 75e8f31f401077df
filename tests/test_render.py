"""Tests of the synthetic chest CT (src/data/anatomy.py) on small volumes."""
from __future__ import annotations

import numpy as np
import pytest

from src.phantom.anatomy import PROFILES, NoduleSpec, RenderedCT, render_ct

RIGHT_LUNG, LEFT_LUNG, AIRWAY = 3, 4, 5     # LUNA16 seg-lungs convention

SHAPE = (24, 160, 160)
SPACING = (1.25, 1.5, 1.5)          # field of view 240 mm
THICKNESS = 1.25


def sphere_nodule(centre_zyx, radius_mm: float, texture: float, spacing=SPACING) -> NoduleSpec:
    """A ball whose reader fraction is 1 inside, then 0.75 / 0.5 / 0.25 in thin shells
    (readers disagreeing on the edge), cropped to its box."""
    centre = np.asarray(centre_zyx, dtype=float)
    spacing = np.asarray(spacing)
    half = np.ceil((radius_mm + 2.0) / spacing).astype(int)
    lo = np.round(centre).astype(int) - half
    axes = [(np.arange(lo[k], lo[k] + 2 * half[k] + 1) - centre[k]) * spacing[k] for k in range(3)]
    dist = np.sqrt(axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2)
    edge = dist - radius_mm
    fraction = np.select([edge < -0.75, edge < 0.0, edge < 0.75, edge < 1.5], [1.0, 0.75, 0.5, 0.25], 0.0)
    return NoduleSpec(centre, radius_mm, texture, fraction.astype(np.float32), tuple(int(v) for v in lo))


def nodule_set() -> list[NoduleSpec]:
    return [sphere_nodule((12, 80, 45), 5.0, 5.0),     # solid, mid right lung
            sphere_nodule((12, 108, 132), 5.0, 1.5),   # ground glass, posterior left lung
            sphere_nodule((8, 115, 30), 3.0, 4.5),     # small solid, posterior-lateral (pleural)
            sphere_nodule((16, 40, 68), 4.0, 3.0)]     # part solid, anterior near the midline


def render(seed: int = 0, nodules=None, profile: str = "standard", shape=SHAPE, spacing=SPACING) -> RenderedCT:
    nodules = nodule_set() if nodules is None else nodules
    return render_ct(shape, spacing, THICKNESS, nodules, PROFILES[profile], np.random.default_rng(seed))


@pytest.fixture(scope="module")
def ct() -> RenderedCT:
    return render(seed=7)


def distance_mm(centre_zyx, shape=SHAPE, spacing=SPACING) -> np.ndarray:
    axes = [(np.arange(shape[k]) - centre_zyx[k]) * spacing[k] for k in range(3)]
    return np.sqrt(axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2)


def marked(nodule: NoduleSpec, shape=SHAPE) -> np.ndarray:
    """Volume mask of the voxels at least half the readers marked."""
    mask = np.zeros(shape, dtype=bool)
    box = tuple(slice(o, o + n) for o, n in zip(nodule.offset_zyx, nodule.fraction.shape))
    mask[box] = nodule.fraction >= 0.5
    return mask


def shell_hu(ct: RenderedCT, nodule: NoduleSpec) -> np.ndarray:
    """HU of the lung 1..5 mm outside the nodule's surface."""
    d = distance_mm(nodule.center_zyx)
    shell = (d > nodule.radius_mm + 1.0) & (d <= nodule.radius_mm + 5.0) & np.isin(ct.lung_labels, (RIGHT_LUNG, LEFT_LUNG))
    return ct.hu[shell].astype(float)


# ----------------------------------------------------------------------------- output contract
def test_output_types_shapes_and_range(ct):
    assert ct.hu.dtype == np.int16 and ct.hu.shape == SHAPE
    assert ct.lung_labels.dtype == np.uint8 and ct.lung_labels.shape == SHAPE
    assert ct.hu.min() >= -1024 and ct.hu.max() <= 3071
    assert set(np.unique(ct.lung_labels)) <= {0, RIGHT_LUNG, LEFT_LUNG, AIRWAY}
    cand = ct.vessel_candidates_zyx
    assert cand.ndim == 2 and cand.shape[1] == 3 and np.issubdtype(cand.dtype, np.floating)
    assert 1 <= len(cand) <= 40


def test_deterministic_in_seed():
    a, b, c = render(seed=3), render(seed=3), render(seed=4)
    assert a.hu.tobytes() == b.hu.tobytes()
    assert a.lung_labels.tobytes() == b.lung_labels.tobytes()
    assert np.array_equal(a.vessel_candidates_zyx, b.vessel_candidates_zyx)
    assert a.hu.tobytes() != c.hu.tobytes()


# ----------------------------------------------------------------------------- anatomy
def test_looks_like_a_chest(ct):
    lung = np.isin(ct.lung_labels, (RIGHT_LUNG, LEFT_LUNG))
    assert 0.15 < lung.mean() < 0.6                                   # two big lungs in a 240 mm field
    assert -900 < np.median(ct.hu[lung]) < -780                       # aerated parenchyma
    assert ct.hu.max() > 600                                          # bone cortex
    soft = (ct.hu > -30) & (ct.hu < 120) & ~lung
    assert soft.mean() > 0.1                                          # muscle, heart, mediastinum
    vessels = (ct.hu[lung] > -300).mean()
    assert 0.01 < vessels < 0.25                                      # a vessel tree, not empty, not solid


def test_right_lung_is_on_the_image_left(ct):
    xs_right = np.nonzero(ct.lung_labels == RIGHT_LUNG)[2]
    xs_left = np.nonzero(ct.lung_labels == LEFT_LUNG)[2]
    assert xs_right.size and xs_left.size
    assert xs_right.mean() < SHAPE[2] / 2 < xs_left.mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_nodule_ball_lies_in_its_lung(seed):
    # one more where this chest puts the heart: the lung has to be grown around it
    nodules = nodule_set() + [sphere_nodule((12, 60, 100), 6.0, 5.0)]
    ct = render(seed=seed, nodules=nodules)
    for nod in nodules:
        ball = distance_mm(nod.center_zyx) <= nod.radius_mm + 3.0
        labels = ct.lung_labels[ball]
        assert np.isin(labels, (RIGHT_LUNG, LEFT_LUNG)).all()
        assert len(np.unique(labels)) == 1


# ----------------------------------------------------------------------------- nodules
def test_solid_nodule_stands_out_and_ground_glass_lies_between(ct):
    solid, ggo = nodule_set()[0], nodule_set()[1]
    solid_mean = float(ct.hu[marked(solid)].mean())
    ggo_mean = float(ct.hu[marked(ggo)].mean())
    assert solid_mean > shell_hu(ct, solid).mean() + 300
    # median: the shell of a nodule may touch a vessel or the heart
    assert np.median(shell_hu(ct, ggo)) + 100 < ggo_mean < solid_mean - 200


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_solid_nodules_visible_under_every_profile(profile):
    ct = render(seed=11, profile=profile)
    for nod in (n for n in nodule_set() if n.texture >= 4):
        assert float(ct.hu[marked(nod)].mean()) > shell_hu(ct, nod).mean() + 300


def test_part_solid_nodule_has_denser_core(ct):
    part = nodule_set()[3]
    d = distance_mm(part.center_zyx)
    core = float(ct.hu[d <= 1.5].mean())
    rim = float(ct.hu[marked(part) & (d > part.radius_mm - 1.5)].mean())
    assert core > rim + 150


# ----------------------------------------------------------------------------- candidates
def test_vessel_candidates_are_in_lungs_away_from_nodules(ct):
    nodules = nodule_set()
    cand = ct.vessel_candidates_zyx
    idx = np.rint(cand).astype(int)
    assert np.all((idx >= 0) & (idx < np.asarray(SHAPE)))
    assert np.isin(ct.lung_labels[tuple(idx.T)], (RIGHT_LUNG, LEFT_LUNG)).all()
    for nod in nodules:
        gap = np.linalg.norm((cand - nod.center_zyx) * np.asarray(SPACING), axis=1)
        assert np.all(gap >= 2.0 * nod.radius_mm)
    # vessel-like: brighter than the parenchyma around them (blood, not air)
    assert np.median(ct.hu[tuple(idx.T)]) > -600


# ----------------------------------------------------------------------------- acquisition
def air_noise_sd(ct: RenderedCT) -> float:
    """Noise sd in the air in front of the body, from the values above -1000 HU only
    (the values below are clipped at -1024)."""
    air = ct.hu[:, :6, :].astype(float)
    assert abs(np.median(air) + 1000) < 15                            # really air
    above = air[air > -1000] + 1000.0
    return float(np.sqrt(np.mean(above ** 2)))


def test_noise_sd_follows_the_profile():
    wide = (1.25, 2.0, 2.0)                                           # 320 mm field: air in front of the body
    measured = {name: air_noise_sd(render(seed=5, nodules=[], profile=name, spacing=wide)) for name in PROFILES}
    for name, sd in measured.items():
        assert sd == pytest.approx(PROFILES[name].noise_sd_hu, rel=0.2)
    assert measured["lowdose_sharp"] > 2.0 * measured["standard"]
