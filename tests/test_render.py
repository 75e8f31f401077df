"""Tests of the synthetic chest CT (src/phantom/render.py and its parts) on small volumes."""
from __future__ import annotations

import numpy as np
import pytest

from src.config import PhantomConfig
from src.phantom.acquisition import PROFILES
from src.phantom.nodules import NoduleSpec
from src.phantom.placement import ATTACHMENTS, wall_tissue
from src.phantom.render import RenderedCT, render_ct
from src.phantom.shapes import overlap

RIGHT_LUNG, LEFT_LUNG, AIRWAY = 3, 4, 5     # LUNA16 seg-lungs convention

SHAPE = (32, 176, 176)
SPACING = (1.25, 1.4, 1.4)          # field of view 246 mm
THICKNESS = 1.25
QUIET = PhantomConfig(emphysema_probability=0.0, plaque_probability=0.0, scar_probability=0.0,
                      micronodules_per_scan=0.0, dependent_density_probability=0.0)


def readers_of_a_ball(radius_mm: float, spacing=SPACING, n_readers: int = 4, seed: int = 0) -> np.ndarray:
    """Four readers who outline the same ball a little differently (radius +- 0.7 mm, centre
    +- 0.5 mm), on a crop of the scan grid."""
    rng = np.random.default_rng(seed)
    spacing = np.asarray(spacing)
    half = np.ceil((radius_mm + 2.0) / spacing).astype(int)
    axes = [(np.arange(-h, h + 1)) * s for h, s in zip(half, spacing)]
    masks = []
    for _ in range(n_readers):
        c = rng.normal(0.0, 0.5, 3)
        r = radius_mm + rng.uniform(-0.7, 0.7)
        d2 = sum(((a - ci) ** 2).reshape(shape) for a, ci, shape in
                 zip(axes, c, [(-1, 1, 1), (1, -1, 1), (1, 1, -1)]))
        masks.append(d2 <= r * r)
    return np.stack(masks)


def spec(radius_mm: float, attachment: str = "isolated", seed: int = 0, **kw) -> NoduleSpec:
    return NoduleSpec(readers_of_a_ball(radius_mm, seed=seed), attachment=attachment, **kw)


def render(specs, seed: int = 0, cfg: PhantomConfig = QUIET, shape=SHAPE, spacing=SPACING) -> RenderedCT:
    return render_ct(shape, spacing, THICKNESS, specs, cfg, np.random.default_rng(seed))


def truth_in_volume(ct: RenderedCT, k: int) -> np.ndarray:
    """Volume mask of the k-th nodule's consensus (the truth the dataset writes)."""
    nod = ct.nodules[k]
    out = np.zeros(ct.hu.shape, dtype=bool)
    consensus = nod.body.reader_masks.mean(axis=0) >= 0.5
    src, dst = overlap(nod.placement.offset, consensus.shape, 0, out.shape)
    out[dst] = consensus[src]
    return out


ATTACHED = [spec(3.5, "juxta-pleural", 1), spec(4.5, "juxta-pleural", 2), spec(3.0, "juxta-pleural", 3),
            spec(3.5, "juxta-vascular", 4), spec(4.0, "juxta-vascular", 5), spec(3.0, "juxta-vascular", 6),
            spec(4.0, "isolated", 7), spec(3.0, "isolated", 8)]


@pytest.fixture(scope="module")
def attached() -> RenderedCT:
    return render(ATTACHED, seed=7)


# ----------------------------------------------------------------------------- output contract
def test_output_types_shapes_and_range(attached):
    ct = attached
    assert ct.hu.dtype == np.int16 and ct.hu.shape == SHAPE
    assert ct.lung_labels.dtype == np.uint8 and ct.lung_labels.shape == SHAPE
    assert ct.hu.min() >= -1024 and ct.hu.max() <= 3071
    assert set(np.unique(ct.lung_labels)) <= {0, RIGHT_LUNG, LEFT_LUNG, AIRWAY}
    cand = ct.vessel_candidates_zyx
    assert cand.ndim == 2 and cand.shape[1] == 3 and np.issubdtype(cand.dtype, np.floating)
    assert len(ct.nodules) == len(ATTACHED)


def test_deterministic_in_seed():
    few = ATTACHED[:2]
    a, b, c = render(few, seed=3), render(few, seed=3), render(few, seed=4)
    assert a.hu.tobytes() == b.hu.tobytes() and a.lung_labels.tobytes() == b.lung_labels.tobytes()
    assert [n.placement.offset.tolist() for n in a.nodules] == [n.placement.offset.tolist() for n in b.nodules]
    assert a.hu.tobytes() != c.hu.tobytes()


# ----------------------------------------------------------------------------- anatomy
def test_looks_like_a_chest():
    ct = render([], seed=2, cfg=PhantomConfig())
    lung = np.isin(ct.lung_labels, (RIGHT_LUNG, LEFT_LUNG))
    assert 0.1 < lung.mean() < 0.6                                    # two big lungs in a 246 mm field
    assert -920 < np.median(ct.hu[lung]) < -760                       # aerated parenchyma
    assert ct.hu.max() > 600                                          # bone cortex
    soft = (ct.hu > -30) & (ct.hu < 120) & ~lung
    assert soft.mean() > 0.1                                          # muscle, heart, mediastinum
    vessels = (ct.hu[lung] > -300).mean()
    assert 0.01 < vessels < 0.25                                      # a vessel tree, not empty, not solid
    xs_right, xs_left = np.nonzero(ct.lung_labels == RIGHT_LUNG)[2], np.nonzero(ct.lung_labels == LEFT_LUNG)[2]
    assert xs_right.mean() < SHAPE[2] / 2 < xs_left.mean()            # right lung on the image's left


# ----------------------------------------------------------------------------- attachment
def test_every_nodule_is_placed_as_planned(attached):
    assert [n.attachment for n in attached.nodules] == [s.attachment for s in ATTACHED]
    assert {s.attachment for s in ATTACHED} == set(ATTACHMENTS)


def test_juxta_pleural_nodules_share_a_broad_patch_with_the_wall(attached):
    pleural = [n.pleural_contact for n in attached.nodules if n.placement.attachment == "juxta-pleural"]
    assert np.median(pleural) >= 0.20 and min(pleural) >= 0.05, pleural
    others = [n.pleural_contact for n in attached.nodules if n.placement.attachment != "juxta-pleural"]
    assert max(others) == 0.0


def test_juxta_vascular_nodules_touch_a_vessel_and_isolated_ones_touch_nothing(attached):
    for n in attached.nodules:
        if n.placement.attachment == "juxta-vascular":
            assert n.vessel_contact > 0.0
        if n.placement.attachment == "isolated":
            assert n.vessel_contact == 0.0 and n.pleural_contact == 0.0


def test_the_wall_distance_says_who_touches_the_wall(attached):
    for n in attached.nodules:
        if n.attachment == "juxta-pleural":
            assert n.wall_distance_mm <= 1.5 * max(SPACING)          # voxel centre to voxel centre
        else:
            assert n.wall_distance_mm >= 1.0


def test_isolated_nodules_sit_at_a_drawn_depth_near_the_pleura(monkeypatch):
    """Their surface-to-pleura gap follows ISOLATED_GAP_MM (published: 5-7 mm on average),
    not a uniform draw over the lung."""
    import src.phantom.placement as placement

    specs = [spec(2.5, "isolated", seed=s) for s in range(10)]

    def mean_gap() -> float:
        ct = render(specs, seed=3, shape=(64, 176, 176), spacing=(1.25, 1.5, 1.5))
        return float(np.mean([n.wall_distance_mm for n in ct.nodules]))

    near = mean_gap()
    monkeypatch.setattr(placement, "ISOLATED_GAP_MM", 40.0)
    assert near < 9.0 and near < mean_gap() - 2.0


def test_no_wall_or_vessel_voxel_is_in_the_truth(attached):
    wall = wall_tissue(attached.lung_labels)
    for k in range(len(attached.nodules)):
        truth = truth_in_volume(attached, k)
        assert truth.any()
        assert not (truth & wall).any() and not (truth & attached.vessel).any()
        assert np.isin(attached.lung_labels[truth], (RIGHT_LUNG, LEFT_LUNG)).all()


def test_a_threshold_grown_from_an_attached_nodule_leaks(attached):
    """What makes attached nodules hard: the solid tissue a nodule touches is as dense as
    the nodule, so -400 HU grown from the centre reaches well beyond the truth."""
    from scipy import ndimage

    for k, n in enumerate(attached.nodules):
        if n.placement.attachment != "juxta-pleural":
            continue
        truth = truth_in_volume(attached, k)
        grown, _ = ndimage.label(attached.hu > -400)
        centre = tuple(np.rint(n.centre_zyx / np.asarray(SPACING)).astype(int))
        region = grown == grown[centre]
        assert region.sum() > 3 * truth.sum()


# ----------------------------------------------------------------------------- density
def _inside(ct: RenderedCT, k: int) -> np.ndarray:
    from scipy import ndimage
    return ct.hu[ndimage.binary_erosion(truth_in_volume(ct, k))].astype(float)


def test_density_classes_have_their_published_hu():
    specs = [spec(4.5, texture=5.0), spec(4.5, texture=1.5), spec(5.0, texture=3.0),
             spec(4.5, calcification="diffuse"), spec(6.0, cavitary=True)]
    ct = render(specs, seed=5, cfg=QUIET)
    solid, ggo, part, calcified, cavity = (_inside(ct, k) for k in range(5))
    assert -40 < np.median(solid) < 130
    assert -800 < np.median(ggo) < -500
    assert ct.nodules[1].body.record["hu_ground_glass"] <= -600 and ct.nodules[2].body.record["hu_ground_glass"] <= -600
    assert (part > -160).mean() > 0.1 and (part < -400).mean() > 0.1      # a solid component in ground glass
    assert np.median(calcified) >= 200
    assert (cavity < -600).mean() > 0.05                                  # air inside the truth
    assert [n.body.record["density"] for n in ct.nodules] == \
        ["solid", "ground-glass", "part-solid", "calcified", "cavitary"]


def test_ground_glass_is_drawn_at_its_published_level():
    """Published: ground glass <= -600 HU (above -472 suggests invasion), domain.md."""
    from src.phantom.nodules import _density

    physical = readers_of_a_ball(3.0)[0]
    rng = np.random.default_rng(0)
    levels = []
    for texture in (1.5, 3.0) * 50:
        record: dict = {}
        _density(spec(3.0, texture=texture), physical, np.asarray(SPACING), 3.0, rng, record)
        levels.append(record["hu_ground_glass"])
    assert max(levels) <= -600 and min(levels) >= -800


def test_the_image_is_not_drawn_from_the_label():
    """Each nodule is rendered from one reader's perturbed outline, so the consensus edge
    sits at a different contrast level from nodule to nodule."""
    specs = [spec(4.0, seed=s) for s in range(8)]
    ct = render(specs, seed=9, cfg=QUIET)
    levels = np.array([n.edge_contrast for n in ct.nodules])
    assert np.isfinite(levels).all()
    assert levels.std() > 0.03 and levels.max() - levels.min() > 0.1


# ----------------------------------------------------------------------------- acquisition
def air_noise_sd(ct: RenderedCT) -> float:
    """Noise sd in the air in front of the body, from the values above -1000 HU only
    (the values below are clipped at -1024)."""
    air = ct.hu[:, :6, :].astype(float)
    assert abs(np.median(air) + 1000) < 15                            # really air
    above = air[air > -1000] + 1000.0
    return float(np.sqrt(np.mean(above ** 2)))


def test_noise_sd_follows_the_kernel():
    wide = (1.25, 2.0, 2.0)                                           # 352 mm field: air in front of the body
    for name in ("soft", "lung"):
        ct = render([], seed=5, cfg=PhantomConfig(profiles=(name,)), spacing=wide)
        assert ct.record["profile"] == name
        lo, hi = PROFILES[name].noise_sd_hu
        assert lo <= ct.record["noise_sd_hu"] <= hi
        assert air_noise_sd(ct) == pytest.approx(ct.record["noise_sd_hu"], rel=0.2)


def test_sharp_kernels_overshoot_edges_and_soft_ones_do_not():
    """Across a lung / soft-tissue edge a lung kernel rings (values beyond both sides), a soft
    kernel only blurs."""
    from src.phantom.acquisition import blur
    from src.phantom.shapes import Grid

    grid = Grid((3, 8, 64), np.array([1.25, 0.7, 0.7]))

    def profile(name):
        hu = np.full(grid.shape, -850.0, dtype=np.float32)
        hu[..., 32:] = 50.0
        blur(hu, grid, 1.25, PROFILES[name])
        return hu[1, 4]
    lung, soft = profile("lung"), profile("soft")
    assert lung.max() > 50.0 + 20.0 and lung.min() < -850.0 - 20.0
    assert soft.max() <= 50.0 + 1e-3 and soft.min() >= -850.0 - 1e-3


def test_distractors_are_drawn_and_kept_off_the_nodules():
    cfg = PhantomConfig(emphysema_probability=1.0, plaque_probability=1.0, scar_probability=1.0,
                        micronodules_per_scan=4.0, dependent_density_probability=1.0)
    ct = render(ATTACHED[:3], seed=11, cfg=cfg)
    assert ct.record["emphysema_holes"] > 0 and ct.record["plaques"] > 0 and ct.record["dependent_hu"] > 0
    assert len(ct.micronodules) == ct.record["micronodules"] > 0
    for centre, diameter in ct.micronodules:
        assert diameter < 3.0
        for n in ct.nodules:
            assert np.linalg.norm(centre * np.asarray(SPACING) - n.centre_zyx) > n.body.reach_mm + diameter / 2
    wall = wall_tissue(ct.lung_labels)
    for k in range(3):
        assert not (truth_in_volume(ct, k) & wall).any()
