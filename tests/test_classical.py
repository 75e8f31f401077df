"""The classical half-max segmenter and the coarse prior it gives the cache."""
import numpy as np
import pytest

from src.data.classical import component_at, half_max_mask, half_max_threshold
from src.data.patches import sphere_distance


def _ball(level_hu: float, background_hu: float, radius_mm: float = 4.0, shape=(24, 32, 32)):
    """A ball of ``level_hu`` in ``background_hu`` at 1 mm voxels, and the signed distance to
    a coordinate sphere of the same radius around its centre."""
    centre = np.array(shape, float) / 2
    dist = sphere_distance(centre, [radius_mm], (1.0, 1.0, 1.0), np.arange(shape[0]), 0, 0, shape[1:])
    hu = np.where(dist <= 0, level_hu, background_hu).astype(np.float32)
    return hu, dist, centre


@pytest.mark.parametrize("nodule, lung", [(40.0, -850.0), (-650.0, -870.0)])   # solid; ground glass
def test_half_max_level_is_halfway_between_the_nodule_and_its_background(nodule, lung):
    hu, dist, _ = _ball(nodule, lung)
    assert half_max_threshold(hu, dist, 4.0) == pytest.approx((nodule + lung) / 2)
    mask = half_max_mask(hu, dist, 4.0, margin_mm=2.0)
    assert np.array_equal(mask, hu == nodule)


def test_half_max_gives_no_mask_where_the_nodule_does_not_stand_out():
    hu, dist, _ = _ball(-800.0, -850.0)          # 50 HU of contrast, below MIN_CONTRAST_HU
    assert half_max_threshold(hu, dist, 4.0) is None and half_max_mask(hu, dist, 4.0, 2.0) is None


def test_half_max_mask_stays_inside_sphere_plus_margin():
    hu, dist, _ = _ball(40.0, -850.0)
    hu[dist <= 4.0] = 40.0                       # the bright region spills 4 mm past the sphere
    mask = half_max_mask(hu, dist, 4.0, margin_mm=2.0)
    assert mask.any() and dist[mask].max() <= 2.0


def test_component_at_takes_the_centre_component_or_the_nearest_within_reach():
    mask = np.zeros((9, 9, 9), bool)
    mask[1:3, 1:3, 1:3] = True                   # a far component
    mask[4:6, 4:6, 6:8] = True                   # a near one, not at the centre
    near = component_at(mask, (4, 4, 4))
    assert near.sum() == 8 and near[4, 4, 6]
    assert not component_at(mask, (4, 4, 4), max_distance_mm=1.0).any()


def test_coarse_prior_is_made_from_coordinates_and_image_only(tiny_ctx):
    """Every nodule that stands out gets a prior; it overlaps its truth mask well, and it is
    computed without the fine mask (the same prior whether the scan's mask exists or not)."""
    from src.data.patches import coarse_prior, to_model_scan
    from src.data.manifest import read_dataset

    record = read_dataset(tiny_ctx.cfg.paths)[0]
    cfg = tiny_ctx.cfg.cache
    ms = to_model_scan(record.load(), cfg)
    assert ms.nodules and all(n.has_prior for n in ms.nodules)
    truth = ms.fine > 0
    dice = 2 * (ms.prior & truth).sum() / (ms.prior.sum() + truth.sum())
    assert dice > 0.8, dice
    ms.fine = None
    assert np.array_equal(coarse_prior(ms, cfg.prior_margin_mm), ms.prior)
