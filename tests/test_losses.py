"""Losses and objectives: which targets reach which samples."""
import pytest
import torch

from src.config import DistillConfig, LossConfig
from src.train.objectives import StudentObjective, TeacherObjective
from src.losses.coarse import CoarseMeanTeacherLoss, sigmoid_rampup
from src.losses.distill import AttentionTransferLoss, BinaryKDLoss

H = 16


class PixelModel(torch.nn.Module):
    """Logits are a free parameter per pixel: gradients are easy to read."""

    def __init__(self, batch=2):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.randn(batch, 1, H, H))

    def forward(self, x):
        return self.logits[: x.shape[0]] + 0 * x[:, :1]


def _batch(fine_ok):
    g = torch.Generator().manual_seed(0)
    n = len(fine_ok)
    dist = torch.full((n, 1, H, H), 10.0)
    dist[..., 4:12, 4:12] = -1.0
    return {"image": torch.rand(n, 3, H, H, generator=g), "image_b": torch.rand(n, 3, H, H, generator=g),
            "fine": (torch.rand(n, 1, H, H, generator=g) > 0.5).float(), "coarse": (dist <= 0).float(),
            "coarse_dist": dist, "fine_ok": torch.tensor(fine_ok), "soft": torch.rand(n, 1, H, H, generator=g),
            "soft_ok": torch.ones(n), "radius_mm": torch.full((n,), 4.0)}


def _grad(objective, model, batch):
    model.zero_grad()
    loss, _ = objective(model, model, batch, progress=10.0)
    loss.backward()
    return model.logits.grad.clone()


def test_coarse_patches_never_see_the_fine_mask():
    for mode in ("ignore", "sphere", "mt"):
        objective = TeacherObjective(LossConfig(coarse=mode))
        model = PixelModel()
        batch = _batch([1.0, 0.0])
        g1 = _grad(objective, model, batch)
        batch["fine"][1] = 1.0 - batch["fine"][1]          # change the coarse sample's (withheld) mask
        g2 = _grad(objective, model, batch)
        torch.testing.assert_close(g1, g2, msg=f"coarse={mode}: fine mask leaked into a coarse sample")
        batch["fine"][0] = 1.0 - batch["fine"][0]          # the fine sample's mask does matter
        assert not torch.allclose(_grad(objective, model, batch)[0], g1[0])


def test_mean_teacher_target_only_inside_the_coarse_region():
    loss = CoarseMeanTeacherLoss(background_margin_mm=2.0, confidence=0.8)
    logits = torch.zeros(1, 1, H, H, requires_grad=True)
    dist = torch.full((1, 1, H, H), 10.0)
    dist[..., 4:12, 4:12] = 0.0
    teacher = torch.full((1, 1, H, H), 0.95)
    out = loss(logits, dist, teacher)
    out["coarse_mt"].backward()
    grad = logits.grad[0, 0]
    assert grad[dist[0, 0] > 2.0].abs().sum() == 0, "outside the coarse region the teacher is ignored"
    assert (grad[dist[0, 0] <= 2.0] < 0).all(), "inside, the student is pulled toward the teacher"
    # unconfident teacher pixels give no target either
    logits.grad = None
    loss(logits, dist, torch.full((1, 1, H, H), 0.5))["coarse_mt"].backward()
    assert logits.grad.abs().sum() == 0
    # beyond the margin: certain background
    logits.grad = None
    loss(logits, dist, teacher)["coarse_bg"].backward()
    assert (logits.grad[0, 0][dist[0, 0] > 2.0] > 0).all() and logits.grad[0, 0][dist[0, 0] <= 2.0].abs().sum() == 0


def test_core_prior_is_certain_nodule_only_near_the_given_centre():
    loss = CoarseMeanTeacherLoss(background_margin_mm=2.0, confidence=0.8, core_fraction=0.4)
    logits = torch.zeros(2, 1, H, H, requires_grad=True)
    y, x = torch.meshgrid(torch.arange(H), torch.arange(H), indexing="ij")
    dist = (((y - 8.0) ** 2 + (x - 8.0) ** 2).sqrt() - 5.0).expand(2, 1, H, H)  # sphere r = 5 mm, 1 mm px
    out = loss(logits, dist, torch.full((2, 1, H, H), 0.5), radius_mm=torch.tensor([5.0, 0.0]))
    out["coarse_core"].backward()
    g = logits.grad
    core = dist[0, 0] <= -3.0   # within 0.4 x 5 mm = 2 mm of the centre
    assert (g[0, 0][core] < 0).all() and g[0, 0][~core].abs().sum() == 0
    assert g[1].abs().sum() == 0, "negatives (radius 0) have no core"


def test_rampup():
    assert sigmoid_rampup(0, 3) < 0.01 and sigmoid_rampup(3, 3) == 1.0 and sigmoid_rampup(1.5, 3) < sigmoid_rampup(2, 3)


def test_kd_is_zero_when_student_equals_teacher():
    p = torch.rand(2, 1, H, H) * 0.98 + 0.01
    weights = torch.rand(2, 1, H, H) + 1.0
    for t in (1.0, 2.0, 4.0):
        kd = BinaryKDLoss(temperature=t)
        assert kd(torch.logit(p), p, weights).item() < 1e-6
        assert kd(torch.logit(p) + 1.0, p, weights).item() > 1e-3


def test_region_weighting_and_feature_term():
    objective = StudentObjective(LossConfig(), DistillConfig(region_weight=4.0, supervised_weight=0.0))
    model = PixelModel()
    batch = _batch([0.0, 0.0])
    batch["soft"][:] = 0.0
    with torch.no_grad():
        model.logits.fill_(2.0)  # same error everywhere
    g = _grad(objective, model, batch)[0, 0]
    assert g[8, 8] / g[0, 0] > 4.0, "pixels in the nodule region weigh (1 + region_weight) x more"
    f = [torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
    region = torch.ones(2, 1, 4, 4)
    assert AttentionTransferLoss()(f, f, region).item() < 1e-10
    assert AttentionTransferLoss()(f, [x.flip(-1) for x in f], region).item() > 0


def test_dice_is_per_patch_so_a_missed_small_nodule_counts_like_a_large_one():
    from src.losses.supervised import DiceBCELoss
    target = torch.zeros(3, 1, 32, 32)
    target[0, :, 4:28, 4:28] = 1          # a large nodule, found
    target[1, :, 15:17, 15:17] = 1        # a small one, missed
    logits = torch.where(target > 0, 20.0, -20.0)
    logits[1] = -20.0
    dice_only = DiceBCELoss(dice_weight=1.0, bce_weight=0.0)
    # mean over the two patches with a nodule (the empty third has no Dice): (0 + 1) / 2
    assert dice_only(logits, target).item() == pytest.approx(0.5, abs=1e-3)
    assert dice_only(logits[2:], target[2:]).item() == 0.0   # a patch without a nodule: no Dice term


def test_the_feature_term_never_averages_in_the_input_itself():
    from src.config import ModelConfig
    from src.models.factory import build_model, forward_with_features
    model = build_model(ModelConfig(encoder="tu-lcnet_050", decoder_channels=(16, 16, 8, 8, 8)), 3, 64)
    x = torch.randn(2, 3, 64, 64)
    _, feats = forward_with_features(model, x)
    # smp's pyramid starts with the input: a term between two copies of one image is always 0
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]
    # and the student's stages meet the feature teacher's own
    teacher = build_model(ModelConfig(encoder="tu-lcnet_050", decoder_channels=(16, 16, 8, 8, 8)), 3, 64)
    objective = StudentObjective(LossConfig(), DistillConfig(feature_weight=1.0), feature_teacher=teacher)
    dist = torch.full((2, 1, 64, 64), 10.0)
    dist[..., 24:40, 24:40] = -1.0
    batch = dict(image=x, fine=torch.zeros(2, 1, 64, 64), fine_ok=torch.ones(2), soft=torch.rand(2, 1, 64, 64),
                 soft_ok=torch.ones(2), coarse_dist=dist)
    _, terms = objective(model, model, batch, progress=1.0)
    assert terms["feature"] > 0


def test_a_core_fraction_of_one_is_the_whole_sphere():
    from src.losses.coarse import core_mask
    dist = torch.tensor([-3.0, -0.5, 0.0, 1.0]).view(1, 1, 1, 4).repeat(2, 1, 1, 1)
    radius = torch.tensor([4.0, 0.0])   # a nodule patch and a negative
    assert core_mask(dist, radius, 1.0)[0].flatten().tolist() == [1, 1, 1, 0]
    assert core_mask(dist, radius, 0.5)[0].flatten().tolist() == [1, 0, 0, 0]
    assert not core_mask(dist, radius, 1.0)[1].any()
