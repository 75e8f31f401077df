"""Metrics, components, resampling and tiling against cases computed by hand."""
import numpy as np
import pytest
import torch
from torch import nn

from src.data.geometry import Geometry
from src.data.preprocess import normalise, resample_labels
from src.evaluation.metrics import dice, inter_reader_dice, segmentation_metrics
from src.predict.predictor import Predictor
from src.data.classical import component_at
from src.runtime import Runtime


def _box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def test_two_cubes_at_a_known_offset():
    # 10^3 cubes shifted by 2 voxels along z: overlap 8 x 10 x 10
    truth = _box((30, 30, 30), (5, 5, 5), (15, 15, 15))
    pred = _box((30, 30, 30), (7, 5, 5), (17, 15, 15))
    m = segmentation_metrics(pred, truth, (1.0, 1.0, 1.0))
    assert m["dice"] == pytest.approx(2 * 800 / 2000)
    assert m["iou"] == pytest.approx(800 / 1200)
    assert m["sensitivity"] == pytest.approx(0.8) and m["precision"] == pytest.approx(0.8)
    # every surface voxel of one cube is at most 2 voxels from the other's surface, and the
    # two z faces (100 of 488 surface voxels each) are exactly 2 away: the 95th percentile is 2
    assert m["hd95_mm"] == pytest.approx(2.0)
    # spacing scales distances: 2 voxels of 1.5 mm along z
    assert segmentation_metrics(pred, truth, (1.5, 1.0, 1.0))["hd95_mm"] == pytest.approx(3.0)
    # at a tolerance of 1 mm, a 2 mm shift puts the two z faces out of tolerance
    assert 0.5 < m["nsd"] < 1.0


def test_hd95_is_the_larger_directed_percentile():
    # a small cube inside a big one: big -> small distances are large, small -> big are 0..
    truth = _box((40, 40, 40), (5, 5, 5), (35, 35, 35))
    pred = _box((40, 40, 40), (18, 18, 18), (22, 22, 22))
    m = segmentation_metrics(pred, truth, (1.0, 1.0, 1.0))
    # from the big cube's surface (30 voxels wide) to the small one's, at least 13 voxels: the
    # symmetric directed maximum dominates (a pooled percentile would be pulled down)
    assert m["hd95_mm"] >= 13.0


def test_empty_policy():
    truth = _box((10, 10, 10), (2, 2, 2), (6, 6, 6))
    empty = np.zeros_like(truth)
    m = segmentation_metrics(empty, truth, (1, 1, 1))
    assert (m["dice"], m["iou"], m["sensitivity"], m["nsd"]) == (0.0, 0.0, 0.0, 0.0)
    assert np.isnan(m["hd95_mm"]) and np.isnan(m["precision"])
    with pytest.raises(ValueError, match="truth mask is empty"):
        segmentation_metrics(truth, empty, (1, 1, 1))
    assert dice(empty, empty) == 1.0 and dice(truth, truth) == 1.0


def test_inter_reader_dice_is_the_mean_pairwise_dice():
    a = _box((8, 8, 8), (0, 0, 0), (4, 4, 4))
    b = _box((8, 8, 8), (0, 0, 2), (4, 4, 6))
    bits = a.astype(np.uint8) | (b.astype(np.uint8) << 1) | (a.astype(np.uint8) << 2)
    assert inter_reader_dice(bits, 3) == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert np.isnan(inter_reader_dice(a.astype(np.uint8), 1))


def test_component_at_centre_nearest_and_too_far():
    mask = _box((20, 20, 20), (2, 2, 2), (5, 5, 5)) | _box((20, 20, 20), (12, 12, 12), (16, 16, 16))
    at = component_at(mask, (3, 3, 3))
    assert at.sum() == 27 and at[3, 3, 3]
    near = component_at(mask, (10, 10, 10), max_distance_mm=5.0)  # 2*sqrt(3) ~ 3.5 from the big cube
    assert near.sum() == 64
    assert not component_at(mask, (10, 10, 10), max_distance_mm=3.0).any()
    assert not component_at(np.zeros_like(mask), (3, 3, 3)).any()


def test_label_resampling_keeps_labels_and_geometry():
    labels = np.zeros((10, 20, 20), np.uint16)
    labels[2:8, 4:10, 4:10] = 3
    labels[2:8, 12:18, 12:18] = 7
    src = Geometry.axis_aligned((0, 0, 0), (1.0, 1.0, 2.0), labels.shape)
    dst = Geometry.axis_aligned((0.1, 0.1, 0.1), (0.5, 0.5, 1.0), (20, 40, 40))  # no sample on an edge
    out = resample_labels(labels, src, dst)
    assert set(np.unique(out)) == {0, 3, 7}
    for value in (3, 7):  # volumes in mm^3 agree within the boundary voxels
        assert (out == value).sum() * 0.25 == pytest.approx((labels == value).sum() * 2.0, rel=0.1)


class _FixedSizeDouble(nn.Module):
    """A 'model' that only accepts its build size and outputs 2 x the first channel."""
    fixed_input_size = (32, 32)

    def forward(self, x):
        assert tuple(x.shape[-2:]) == self.fixed_input_size, x.shape
        return 2 * x[:, :1]


def test_predictor_tiles_fixed_size_models_without_seams():
    rt = Runtime(torch.device("cpu"), None)
    predictor = Predictor([_FixedSizeDouble()], rt, window=(-1000.0, 1000.0))
    stacks = np.random.default_rng(0).integers(-1000, 1000, size=(3, 1, 50, 77)).astype(np.int16)
    expected = 2 * (stacks[:, 0].astype(np.float32) + 1000) / 2000
    np.testing.assert_allclose(predictor.logits(stacks), expected, atol=1e-5)


class _RecordsLayout(nn.Module):
    """A small conv net that records whether each input came laid out channels_last."""

    def __init__(self):
        super().__init__()
        self.prompted, self.fixed_input_size, self.layouts = False, None, []
        self.conv = nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x):
        self.layouts.append(x.is_contiguous(memory_format=torch.channels_last))
        return self.conv(x)


def test_predictor_runs_channels_last_on_cpu_with_the_plain_forwards_logits():
    torch.manual_seed(0)
    model = _RecordsLayout()
    stacks = np.random.default_rng(0).integers(-1000, 400, size=(5, 3, 40, 48)).astype(np.int16)
    with torch.inference_mode():   # the model as built: contiguous weights and input
        expected = model(torch.from_numpy(normalise(stacks, (-1000.0, 400.0))))[:, 0].numpy()
    predictor = Predictor([model], Runtime(torch.device("cpu"), None), window=(-1000.0, 400.0), batch_size=2)
    np.testing.assert_allclose(predictor.logits(stacks), expected, atol=1e-5)
    assert model.layouts[1:] == [True] * 3    # three batches (2 + 2 + 1), each channels_last
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)


class _ReturnsChannel(nn.Module):
    """Outputs one of its input channels, and records how many it was given."""

    def __init__(self, prompted: bool):
        super().__init__()
        self.prompted, self.fixed_input_size, self.seen = prompted, None, []

    def forward(self, x):
        self.seen.append(x.shape[1])
        return x[:, -1:] if self.prompted else 0 * x[:, :1]


def test_prompted_models_get_the_coordinates_channel_and_unprompted_ones_do_not():
    from src.data.preprocess import NO_PROMPT, prompt_channel
    rt = Runtime(torch.device("cpu"), None)
    prompted, plain = _ReturnsChannel(True), _ReturnsChannel(False)
    predictor = Predictor([prompted, plain], rt, window=(-1000.0, 400.0))
    stacks = np.zeros((2, 3, 32, 32), np.int16)
    yy, xx = np.mgrid[:32, :32]
    dist = np.stack([np.hypot(yy - 16, xx - 16) - 5.0] * 2).astype(np.float32)   # a 10 mm sphere, 1 mm px
    # the ensemble mean: the prompted model's channel, halved by the plain model's zeros
    np.testing.assert_allclose(2 * predictor.logits(stacks, dist), prompt_channel(dist), atol=1e-6)
    assert prompted.seen == [4] and plain.seen == [3]
    assert prompt_channel(dist)[0, 16, 16] == pytest.approx(0.5) and prompt_channel(dist)[0, 0, 0] == -1.0
    np.testing.assert_allclose(predictor.logits(stacks), NO_PROMPT)   # whole-scan mode: no coordinates
