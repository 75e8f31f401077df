"""lung_mask_from_hu on synthetic chests: a body in air on a table, two lungs with vessels,
seen whole, through tight fields of view (lungs on the image border, or no room air at
all), as a few slices, and with no lungs."""
from functools import lru_cache

import numpy as np
import pytest

from src.data.geometry import Geometry
from src.data.preprocess import lung_mask_from_hu

SPACING = (2.0, 1.5, 1.5)         # z, y, x mm (the mask is made at 2 mm, so in-plane is resampled)
SHAPE = (40, 171, 256)            # 80 x 256 x 384 mm
BODY_MM = (100.0, 150.0)          # body semi-axes (y, x): a 300 x 200 mm chest
LUNG_MM = (70.0, 50.0, 35.0)      # lung semi-axes (y, x, z)
LUNG_X_MM = 65.0                  # lung centres left/right of the midline (30 mm mediastinum)
MIN_DICE = 0.95                   # the method gives 0.99 on all of these


def _chest(shape=SHAPE, spacing_zyx=SPACING, lungs=True, seed=0):
    """-> (HU, true lungs, body, geometry); coordinates are mm from the volume's centre."""
    return tuple(a.copy() if isinstance(a, np.ndarray) else a for a in _made_chest(shape, spacing_zyx, lungs, seed))


@lru_cache(maxsize=None)   # drawing the vessels takes most of a test's time
def _made_chest(shape, spacing_zyx, lungs, seed):
    rng = np.random.default_rng(seed)
    column = (3, 1, 1, 1)
    centre = (np.array(shape, np.float32) - 1).reshape(column) / 2
    z, y, x = (np.indices(shape, dtype=np.float32) - centre) * np.asarray(spacing_zyx, np.float32).reshape(column)
    hu = np.full(shape, -1000.0, np.float32)
    body = (y / BODY_MM[0]) ** 2 + (x / BODY_MM[1]) ** 2 <= 1
    hu[body] = 40.0
    hu[(np.abs(y - 115.0) < 2.5) & (np.abs(x) < 180.0)] = 200.0        # the table, 15 mm below the back
    truth = np.zeros(shape, bool)
    if lungs:
        for side in (-1, 1):
            truth |= ((y + 5) / LUNG_MM[0]) ** 2 + ((x - side * LUNG_X_MM) / LUNG_MM[1]) ** 2 \
                + (z / LUNG_MM[2]) ** 2 <= 1
        hu[truth] = -850.0
        for c in rng.uniform(-1, 1, (60, 3)) * [LUNG_MM[2], LUNG_MM[0], LUNG_MM[1] + LUNG_X_MM]:
            vessel = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= rng.uniform(2, 4) ** 2
            hu[vessel & truth] = 50.0
    hu += rng.normal(0, 20, shape).astype(np.float32)
    geometry = Geometry.axis_aligned((0, 0, 0), tuple(spacing_zyx[::-1]), shape)
    return hu, truth, body, geometry


def _crop(hu, truth, body, geometry, y_mm=None, x_mm=None, z_mm=None):
    """The part of the volume within (lo, hi) mm of the centre along each given axis."""
    box = []
    for axis, span in enumerate((z_mm, y_mm, x_mm)):
        n, s = hu.shape[axis], geometry.spacing_zyx[axis]
        lo, hi = span if span else (-np.inf, np.inf)
        mm = (np.arange(n) - (n - 1) / 2) * s
        idx = np.flatnonzero((mm >= lo) & (mm <= hi))
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    box = tuple(box)
    cropped = geometry.crop([b.start for b in box], [b.stop - b.start for b in box])
    return hu[box], truth[box], body[box], cropped


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def _check(hu, truth, body, geometry):
    mask = lung_mask_from_hu(hu, geometry)
    assert mask.shape == hu.shape and mask.dtype == bool
    assert _dice(mask, truth) >= MIN_DICE
    assert not (mask & ~body).any(), "room air outside the body is in the lung mask"


def test_whole_chest_in_air():
    _check(*_chest())


@pytest.mark.parametrize("x_mm", [(-100, 100), (-100, 200)], ids=["both-sides", "one-side"])
def test_lungs_touching_the_lateral_border(x_mm):
    hu, truth, body, geometry = _crop(*_chest(), x_mm=x_mm)
    assert truth[:, :, 0].any()                        # the crop really cuts a lung
    _check(hu, truth, body, geometry)


def test_room_air_under_a_back_joined_to_the_table_is_not_lung():
    """A pad joins back and table, so the air between them lies inside the body's outline and,
    in a tight field of view, touches the border like the lungs do."""
    hu, truth, body, geometry = _chest()
    y, x = np.ogrid[:SHAPE[1], :SHAPE[2]]
    y, x = (y - (SHAPE[1] - 1) / 2) * SPACING[1], (x - (SHAPE[2] - 1) / 2) * SPACING[2]
    hu[:, (y > 95) & (y < 115) & (np.abs(x) < 40)] = 40.0
    hu, truth, body, geometry = _crop(hu, truth, body, geometry, x_mm=(-100, 100))
    _check(hu, truth, body, geometry)


def test_field_of_view_inside_the_chest_wall():
    hu, truth, body, geometry = _crop(*_chest(), y_mm=(-60, 50), x_mm=(-100, 100))
    assert body.all()                                  # no room air at all
    assert truth[:, 0].any() and truth[:, -1].any() and truth[:, :, 0].any() and truth[:, :, -1].any()
    _check(hu, truth, body, geometry)


def test_mostly_lung():
    """A box inside one lung plus 10 mm of mediastinum."""
    hu, truth, body, geometry = _crop(*_chest(), y_mm=(-50, 40), x_mm=(5, 100), z_mm=(-20, 20))
    assert truth.mean() > 0.8
    _check(hu, truth, body, geometry)


def test_a_few_slices():
    """Two 1.25 mm slices through the lungs: ~27 ml per lung, under a whole scan's 50 ml floor."""
    hu, truth, body, geometry = _chest(shape=(2,) + SHAPE[1:], spacing_zyx=(1.25,) + SPACING[1:])
    _check(hu, truth, body, geometry)


@pytest.mark.parametrize("crop", [None, (-60, 60)], ids=["body-in-air", "tissue-only"])
def test_no_lungs_gives_an_empty_mask(crop):
    """A water phantom on the table, and a field of view inside it (no air at all)."""
    hu, _, body, geometry = _chest(lungs=False)
    if crop:
        hu, _, body, geometry = _crop(hu, body, body, geometry, y_mm=crop, x_mm=crop)
        assert body.all()
    assert not lung_mask_from_hu(hu, geometry).any()


def test_air_only_gives_an_empty_mask():
    hu = np.random.default_rng(1).normal(-1000, 20, (20, 64, 64)).astype(np.float32)
    assert not lung_mask_from_hu(hu, Geometry.axis_aligned((0, 0, 0), (2, 2, 2), hu.shape)).any()
