"""Training loop: learning happens, checkpoints round-trip, resume is exact, AMP path runs."""
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from src.data.folds import split_uids
from src.layout import ExperimentLayout
from src.models.checkpoint import load_checkpoint, model_from_checkpoint
from src.models.factory import build_model
from src.runtime import Runtime, channels_last
from src.train.augment import Augmenter
from src.train.datasets import EpochSampler, PatchDataset, sampling_weights, select_patches
from src.train.objectives import TeacherObjective
from src.train.optim import warmup_cosine
from src.train.teacher import train_teacher


def _fixed_batch(ctx, n=16):
    splits = split_uids(ctx.folds, 0)
    sel = select_patches(ctx.cache, ctx.folds, splits["train"])
    ds = PatchDataset(ctx.cache, sel, Augmenter(ctx.cfg.augment), views=2, prompt_dropout=0.5)
    pos = np.flatnonzero(~ctx.cache.patches.iloc[sel.indices]["negative"].to_numpy())[:n]
    return torch.utils.data.default_collate([ds[(int(i), int(i))] for i in pos])


def test_tiny_model_loss_falls(tiny_ctx):
    torch.manual_seed(0)
    model = build_model(tiny_ctx.cfg.teacher.model, tiny_ctx.k, tiny_ctx.patch_size)
    objective = TeacherObjective(dataclasses.replace(tiny_ctx.cfg.teacher.loss, coarse="sphere"))
    batch = _fixed_batch(tiny_ctx)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss, _ = objective(model, model, batch, 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses


def test_sampler_is_seeded_balanced_and_resumable(tiny_ctx):
    meta = tiny_ctx.cache.patches
    negative = meta["negative"].to_numpy()
    fine_ok = np.arange(len(meta)) % 3 == 0
    w = sampling_weights(meta, fine_ok, positive_fraction=0.6, fine_share=0.5, small_boost=2.0)
    assert w.sum() == pytest.approx(1.0) and w[negative].sum() == pytest.approx(0.4)
    assert w[~negative & fine_ok].sum() == pytest.approx(0.3) and w[~negative & ~fine_ok].sum() == pytest.approx(0.3)
    per_nodule = pd.Series(w[~negative & ~fine_ok]).groupby(meta.loc[~negative & ~fine_ok, "nodule_uid"].to_numpy()).sum()
    small = meta[~negative & ~fine_ok].groupby("nodule_uid")["diameter_mm"].first() < 6
    assert np.allclose(per_nodule[~small[per_nodule.index].to_numpy()], per_nodule[~small[per_nodule.index].to_numpy()].iloc[0])
    a = EpochSampler(w, 200, seed=1)
    a.set_epoch(3)
    full = list(a)
    a.set_epoch(3, skip=50)
    assert list(a) == full[50:]
    a.set_epoch(4)
    assert list(a) != full
    # DDP: the ranks take turns through one seeded draw, so together they see exactly what
    # one process would, and no two ranks see the same draw
    ranks = [EpochSampler(w, 100, seed=1, rank=r, world=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(3)
    single = EpochSampler(w, 200, seed=1)
    single.set_epoch(3)
    interleaved = [item for pair in zip(list(ranks[0]), list(ranks[1])) for item in pair]
    assert interleaved == list(single)


def test_teacher_outputs_checkpoint_round_trip_and_holdout_isolation(tiny_trained):
    ctx = tiny_trained
    out = ctx.layout.teacher_dir(0)
    for name in ("args.yaml", "summary.csv", "checkpoint_best.pt", "checkpoint_last.pt", "val_metrics.csv",
                 "val_predictions.h5", "training_curves.png"):
        assert (out / name).is_file(), name
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == ctx.cfg.teacher.epochs and {"train_loss", "val_dice", "lr", "seconds"} <= set(summary)
    ckpt = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert {"model", "ema", "optimizer", "scaler", "scheduler", "epoch", "torch_rng"} <= set(ckpt)
    holdout = split_uids(ctx.folds, None)["holdout"]
    assert not (set(ckpt["train_uids"]) | set(ckpt["val_uids"])) & holdout
    model = model_from_checkpoint(out / "checkpoint_best.pt")
    reference = build_model(ctx.cfg.teacher.model, ctx.k, ctx.patch_size).eval()
    reference.load_state_dict(load_checkpoint(out / "checkpoint_best.pt")["ema"])
    x = torch.rand(2, ctx.k + 1, 64, 64)   # the slices and the prompt
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference(x))


def test_amp_code_path_runs_on_cpu_in_bf16(tiny_ctx):
    rt = Runtime(torch.device("cpu"), torch.bfloat16)
    model = build_model(tiny_ctx.cfg.teacher.model, tiny_ctx.k, tiny_ctx.patch_size)
    objective = TeacherObjective(tiny_ctx.cfg.teacher.loss)
    batch = _fixed_batch(tiny_ctx, n=4)
    scaler = rt.grad_scaler()
    assert not scaler.is_enabled(), "bf16 needs no loss scaling"
    with rt.autocast():
        logits = model(batch["image"])
        loss, _ = objective(model, model, batch, 5.0)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    scaler.scale(loss).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert Runtime(torch.device("cpu"), torch.float16).grad_scaler().is_enabled(), "fp16 scales the loss"
    assert not Runtime(torch.device("cpu"), None).grad_scaler().is_enabled()


def test_lr_schedule_warms_up_then_decays_to_one_percent():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=14)
    lrs = []
    for _ in range(16):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(lrs[:4], [0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[9] == pytest.approx(0.01 + 0.99 * 0.5)
    assert all(a >= b for a, b in zip(lrs[4:14], lrs[5:14])) and lrs[14] == pytest.approx(0.01) == lrs[15]


def test_non_finite_losses_are_skipped_then_abort(tiny_ctx, cpu_runtime, tmp_path, monkeypatch):
    import src.train.teacher as teacher_module
    from src.train.trainer import MAX_BAD_STEPS, TrainingDiverged
    cfg = dataclasses.replace(tiny_ctx.cfg, paths=dataclasses.replace(tiny_ctx.cfg.paths, outputs=str(tmp_path)),
                              teacher=dataclasses.replace(tiny_ctx.cfg.teacher, epochs=1, steps_per_epoch=3))
    ctx = dataclasses.replace(tiny_ctx, cfg=cfg, layout=ExperimentLayout.from_paths(cfg.paths))
    original = teacher_module.TeacherObjective.__call__
    calls = {"n": 0}

    def sometimes_nan(self, *args, **kwargs):
        calls["n"] += 1
        loss, logs = original(self, *args, **kwargs)
        return (loss * float("nan"), logs) if calls["n"] == 2 else (loss, logs)
    monkeypatch.setattr(teacher_module.TeacherObjective, "__call__", sometimes_nan)
    train_teacher(ctx, 0, cpu_runtime)
    weights = load_checkpoint(ctx.layout.teacher_checkpoint(0, "final"))["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()), "NaN never stepped in"

    def always_nan(self, *args, **kwargs):
        loss, logs = original(self, *args, **kwargs)
        return loss * float("nan"), logs
    monkeypatch.setattr(teacher_module.TeacherObjective, "__call__", always_nan)
    ctx.cfg.teacher.steps_per_epoch = MAX_BAD_STEPS + 1
    with pytest.raises(TrainingDiverged, match="not finite for 20 steps"):
        train_teacher(dataclasses.replace(ctx, layout=ExperimentLayout(tmp_path / "nan")), 0, cpu_runtime)


def test_torchrun_ddp_two_processes_on_cpu(tiny_ctx, tmp_path):
    """`torchrun --nproc_per_node 2 train.py --fold K` (gloo on CPU): ranks split the
    batches, rank 0 alone writes, and the result is a normal fold directory."""
    import subprocess
    import sys

    from conftest import TINY_OVERRIDES
    p = tiny_ctx.cfg.paths
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "train.py", "--fold", "2", "--device", "cpu", "--config", "", "--set", *TINY_OVERRIDES,
           f"paths.data={p.data}", f"paths.cache={p.cache}", f"paths.folds={p.folds}",
           f"paths.outputs={tmp_path}", "paths.experiment=ddp", "teacher.epochs=1", "teacher.steps_per_epoch=2"]
    result = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=600,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "ddp" / "teacher" / "fold_2"
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 1 and summary["step"].iloc[0] == 2
    assert (out / "val_metrics.csv").is_file() and "OOF mean nodule Dice" in result.stdout


def test_prior_loss_uses_the_half_max_prior_where_there_is_one_and_the_mean_teacher_elsewhere(tiny_ctx):
    torch.manual_seed(0)
    model = build_model(tiny_ctx.cfg.teacher.model, tiny_ctx.k, tiny_ctx.patch_size)
    objective = TeacherObjective(dataclasses.replace(tiny_ctx.cfg.teacher.loss, coarse="prior"))
    assert objective.needs_two_views
    batch = _fixed_batch(tiny_ctx)
    coarse = batch["fine_ok"] < 0.5
    assert coarse.any() and (batch["prior_ok"][coarse] > 0.5).any()
    _, logs = objective(model, model, batch, 1.0)
    assert "coarse_prior" in logs and np.isfinite(logs["coarse_prior"])
    batch["prior_ok"] = torch.zeros_like(batch["prior_ok"])      # no prior anywhere: mean teacher only
    _, logs = objective(model, model, batch, 1.0)
    assert "coarse_prior" not in logs and "coarse_mt" in logs


def test_validation_every_n_epochs_and_best_only_among_validated(tiny_ctx, cpu_runtime, tmp_path):
    cfg = dataclasses.replace(tiny_ctx.cfg, paths=dataclasses.replace(tiny_ctx.cfg.paths, outputs=str(tmp_path)),
                              teacher=dataclasses.replace(tiny_ctx.cfg.teacher, epochs=3, steps_per_epoch=2,
                                                          val_every=2))
    ctx = dataclasses.replace(tiny_ctx, cfg=cfg, layout=ExperimentLayout.from_paths(cfg.paths))
    train_teacher(ctx, 0, cpu_runtime)
    summary = pd.read_csv(ctx.layout.teacher_dir(0) / "summary.csv")
    validated = summary.filter(like="val_").notna().any(axis=1).tolist()
    assert summary["epoch"].tolist() == [1, 2, 3] and validated == [False, True, True]
    assert not summary["best"].iloc[0] and summary["best"].iloc[1]


def test_prompted_patches_carry_the_coordinates_and_drop_them_at_the_configured_rate(tiny_ctx):
    from src.data.preprocess import NO_PROMPT, prompt_channel
    sel = select_patches(tiny_ctx.cache, tiny_ctx.folds, split_uids(tiny_ctx.folds, 0)["train"])
    nodule = int(np.flatnonzero(~tiny_ctx.cache.patches.iloc[sel.indices]["negative"].to_numpy())[0])
    plain = PatchDataset(tiny_ctx.cache, sel)
    prompted = PatchDataset(tiny_ctx.cache, sel, prompt_dropout=0.3)
    item = prompted[nodule]   # no augmentation seed: the prompt is given
    assert item["image"].shape[0] == plain[nodule]["image"].shape[0] + 1 == tiny_ctx.k + 1
    np.testing.assert_allclose(item["image"][-1].numpy(), prompt_channel(item["coarse_dist"][0].numpy()))
    assert item["image"][-1].max() > 0   # the sphere is there
    augmented = PatchDataset(tiny_ctx.cache, sel, Augmenter(tiny_ctx.cfg.augment), views=2, prompt_dropout=0.3)
    dropped = [bool((augmented[(nodule, s)]["image"][-1] == NO_PROMPT).all()) for s in range(200)]
    assert 0.2 < np.mean(dropped) < 0.4
    both = augmented[(nodule, 5)]
    assert torch.equal(both["image"][-1], both["image_b"][-1])   # the mean teacher's view is told the same


def test_a_run_without_a_coarse_loss_samples_only_patches_with_a_fine_mask(tiny_ctx):
    sel = select_patches(tiny_ctx.cache, tiny_ctx.folds, split_uids(tiny_ctx.folds, 0)["train"])
    fine = sel.only_fine()
    assert (~sel.fine_ok).any() and fine.fine_ok.all() and len(fine.indices) == sel.fine_ok.sum()
    meta = tiny_ctx.cache.patches.iloc[fine.indices]
    w = sampling_weights(meta, fine.fine_ok, positive_fraction=0.5, fine_share=0.5, small_boost=1.0)
    assert w[~meta["negative"].to_numpy()].sum() == pytest.approx(0.5)   # the same nodule share as any arm


def test_a_stride1_skip_is_wired_into_the_head_and_rebuilt_from_its_checkpoint(tmp_path):
    from src.config import CacheConfig, ConfigError, ModelConfig, to_dict
    from src.models.checkpoint import save_checkpoint
    from src.models.factory import StrideOneUnet
    cfg = ModelConfig(encoder="tu-lcnet_050", decoder_channels=(32, 16, 16, 8, 8), prompt=True, stride1_skip=4,
                      head_prior=0.02)
    torch.manual_seed(0)
    model = build_model(cfg, 3, 32).eval()
    assert isinstance(model, StrideOneUnet) and model.prompted
    assert torch.sigmoid(model.segmentation_head[0].bias).item() == pytest.approx(0.02)   # the prior is on the new head
    x = torch.randn(2, 4, 32, 32)   # 3 slices + the prompt
    with torch.inference_mode():
        out = model(x)
        assert out.shape == (2, 1, 32, 32)
        save_checkpoint(dict(model_config=to_dict(cfg), in_channels=3, patch_size=32, model=model.state_dict(),
                             config={"cache": to_dict(CacheConfig())}), tmp_path / "m.pt")
        torch.testing.assert_close(model_from_checkpoint(tmp_path / "m.pt", "model")(x), out)
        model.stem[1][0].weight.zero_()   # cut the full-resolution branch: the output changes
        assert not torch.allclose(model(x), out)
    with pytest.raises(ConfigError, match="stride1_skip needs arch Unet"):
        build_model(dataclasses.replace(cfg, arch="FPN"), 3, 32)


def test_channels_last_moves_2d_networks_and_leaves_3d_ones():
    # the FPR's cube classifier has rank-5 weights, which torch cannot lay out channels_last:
    # `train.py --stage fpr` on CUDA (fpr.channels_last on by default) failed before the guard
    flat = channels_last(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 1)))
    assert flat[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not flat[0].weight.is_contiguous()
    cube = channels_last(torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3)))
    assert cube[0].weight.is_contiguous()


def test_batch_norm_folds_into_the_conv_before_it_and_nowhere_else(capsys):
    from timm.layers import BatchNormAct2d

    from src.config import ModelConfig
    from src.models.fusion import fold_batch_norms

    def norms(m):
        return sum(type(q) in (torch.nn.BatchNorm2d, BatchNormAct2d) for q in m.modules())

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder="tu-lcnet_050", decoder_channels=(32, 16, 16, 8, 8), prompt=True,
                                    stride1_skip=4), 3, 32)
    with torch.no_grad():   # statistics away from (0, 1), so that a wrong fold shows
        for _ in range(3):
            model(torch.rand(4, 4, 32, 32) * 3)
    model.eval()
    x = torch.rand(2, 4, 32, 32)
    with torch.no_grad():
        reference = model(x)
        folded = fold_batch_norms(model, torch.rand(2, 4, 32, 32))
        assert norms(model) > 0 and norms(folded) == 0 and folded.prompted
        torch.testing.assert_close(folded(x), reference, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model(x), reference)   # the original is left as it was

    class Residual(torch.nn.Module):   # the conv's output also bypasses its norm: no fold
        def __init__(self):
            super().__init__()
            self.conv, self.norm = torch.nn.Conv2d(2, 2, 3, padding=1), torch.nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.norm(y) + y

    block = Residual().eval()
    block.norm.running_mean.fill_(1.0)
    block.norm.running_var.fill_(4.0)
    assert fold_batch_norms(block, torch.rand(1, 2, 8, 8)) is block
    assert "not folded" in capsys.readouterr().err


class _ToyPoints(torch.utils.data.Dataset):
    """Eight 2-vectors for a toy trainer (a Linear(2, 1) driven to 0)."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"x": torch.full((2,), float(i[0]))}   # the sampler yields (index, augmentation seed)


def _toy_objective(model, ema, batch, progress):
    loss = model(batch["x"]).float().pow(2).mean()
    return loss, {"loss": loss.item()}


def test_a_run_whose_validation_never_scores_keeps_its_last_epoch_as_the_best(tmp_path, capsys):
    """A fold with nothing to score (or a one-class AUC: NaN) still leaves a best checkpoint,
    and it is this run's: an earlier run's best in the same folder is removed at the start."""
    from src.config import StageConfig
    from src.models.checkpoint import save_checkpoint
    from src.train.trainer import RunInfo, Trainer

    stage = StageConfig(epochs=2, steps_per_epoch=2, batch_size=2, num_workers=0, channels_last=False, warmup_epochs=0)
    rt = Runtime(torch.device("cpu"), None)
    info = RunInfo("toy", None, {}, 2, 1, {}, "hash", "cache")
    save_checkpoint({"stale": True}, tmp_path / "checkpoint_best.pt")
    for scores in ({}, {"val_dice": float("nan")}):
        torch.manual_seed(0)
        trainer = Trainer(stage, torch.nn.Linear(2, 1), _toy_objective, _ToyPoints(), np.ones(8),
                          lambda model: dict(scores), tmp_path, rt, info)
        summary = trainer.fit()
        assert not summary["best"].any() and "the last epoch is kept as the best" in capsys.readouterr().err
        best, final = (torch.load(tmp_path / f"checkpoint_{k}.pt", weights_only=True) for k in ("best", "final"))
        assert "stale" not in best and best["epoch"] == final["epoch"] == 2
        torch.testing.assert_close(best["ema"], final["ema"])


def test_a_run_saved_in_fp32_resumes_under_fp16(tmp_path):
    """A checkpoint written without a GradScaler (CPU, bf16, amp off) resumes on a card that
    needs one (fp16): a fresh scale, not a crash on the empty scaler state."""
    from src.config import StageConfig
    from src.train.trainer import RunInfo, Trainer

    info = RunInfo("toy", None, {}, 2, 1, {"cache": {}}, "hash", "cache")   # what load_checkpoint checks
    for epochs, amp in ((1, None), (2, torch.float16)):
        stage = StageConfig(epochs=epochs, steps_per_epoch=2, batch_size=2, num_workers=0, channels_last=False,
                            warmup_epochs=0)
        trainer = Trainer(stage, torch.nn.Linear(2, 1), _toy_objective, _ToyPoints(), np.ones(8), lambda model: {},
                          tmp_path, Runtime(torch.device("cpu"), amp), info)
        if amp is not None:
            assert trainer.resume() and trainer.epoch == 1
        trainer.fit()
    assert torch.load(tmp_path / "checkpoint_final.pt", weights_only=True)["epoch"] == 2


def test_a_coarse_nodule_trains_only_on_the_slices_its_sphere_reaches(tiny_ctx):
    """The cache cuts slices as far as a nodule's mask reaches; for a scan whose masks are
    withheld (coarse), the mask must not choose them: only the sphere's slices stay."""
    from types import SimpleNamespace
    ctx = tiny_ctx
    nodules = ctx.cache.nodules.set_index("nodule_uid")
    train = split_uids(ctx.folds, 0)["train"]
    meta = ctx.cache.patches.copy()

    def beyond_sphere(rows):
        at = nodules.loc[rows["nodule_uid"]]
        reach = at["diameter_mm"].to_numpy() / 2 / ctx.cache.config.spacing_zyx[0]
        centre, z = at["center_z"].to_numpy(), rows["z"].to_numpy()
        return (z < np.ceil(centre - reach)) | (z > np.floor(centre + reach))

    # as a mask reaching two slices past the sphere would have the cache cut them: one patch
    # of a coarse and one of a fine scan moved there
    positive = meta[meta["seriesuid"].isin(train) & ~meta["negative"].astype(bool)]
    moved = {}
    for kind in ("coarse", "fine"):
        scans = set(ctx.folds.loc[ctx.folds["label_kind"] == kind, "seriesuid"])
        row = positive[positive["seriesuid"].isin(scans)].index[0]
        meta.loc[row, "z"] = int(np.floor(nodules.loc[meta.loc[row, "nodule_uid"], "center_z"] +
                                          nodules.loc[meta.loc[row, "nodule_uid"], "diameter_mm"] / 2 /
                                          ctx.cache.config.spacing_zyx[0])) + 2
        moved[kind] = meta.index.get_loc(row)
    cache = SimpleNamespace(patches=meta, nodules=ctx.cache.nodules, config=ctx.cache.config)
    sel = select_patches(cache, ctx.folds, train)
    chosen = meta.iloc[sel.indices]
    coarse = chosen[~chosen["negative"].astype(bool).to_numpy() & ~sel.fine_ok]
    assert len(coarse) and not beyond_sphere(coarse).any()
    assert moved["coarse"] not in sel.indices and moved["fine"] in sel.indices   # a fine mask may reach further
    assert len(sel.indices) == meta["seriesuid"].isin(train).sum() - 1
