"""PyTorch side of the cache: which patches a stage may train on, balanced sampling, and
the Dataset that turns cached patches into normalised, augmented tensors.

``fine_ok`` is the switch that keeps withheld masks out of training: a patch may use its
fine mask only if its scan is ``fine`` in folds.csv *and* the cache knows the mask there.
Every other patch is coarse: centre + diameter only. The cache is cut before the folds
exist, so a nodule's slices reach as far as its mask where it has one; a coarse nodule
keeps only the slices its sphere reaches (the withheld mask must not choose them either).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from src.data.cache import PatchCache
from src.data.groups import PART_SOLID_MAX, SIZE_BINS_MM
from src.data.patches import DIST_UNITS_PER_MM
from src.data.preprocess import normalise, prompt_channel
from src.train.augment import Augmenter

SMALL_NODULE_MM = SIZE_BINS_MM[1]   # the 3-6 mm bin


@dataclass
class PatchSelection:
    """Rows of the cache a stage uses, with per-patch supervision flags."""
    indices: np.ndarray          # rows of cache.patches
    fine_ok: np.ndarray          # bool per selected patch: fine mask may be used

    def only_fine(self) -> PatchSelection:
        """The patches with a fine mask: all that a run without a coarse loss learns from, so
        that its batches hold the same share of nodule patches with a loss as any other arm's."""
        return PatchSelection(self.indices[self.fine_ok], self.fine_ok[self.fine_ok])


def select_patches(cache: PatchCache, folds: pd.DataFrame, uids: set[str]) -> PatchSelection:
    """The patches of scans ``uids``, each marked fine or coarse by folds.csv; a coarse
    nodule's patches only on the slices its sphere reaches."""
    meta = cache.patches
    rows = np.flatnonzero(meta["seriesuid"].isin(uids).to_numpy())
    fine_scans = set(folds.loc[folds["label_kind"] == "fine", "seriesuid"])
    sel = meta.iloc[rows]
    fine_ok = sel["seriesuid"].isin(fine_scans).to_numpy() & (sel["label_kind"] == "fine").to_numpy()
    keep = fine_ok | sel["negative"].to_numpy(bool) | _in_sphere_slices(sel, cache)
    return PatchSelection(rows[keep], fine_ok[keep])


def _in_sphere_slices(patches: pd.DataFrame, cache: PatchCache) -> np.ndarray:
    """Whether each nodule patch's slice lies within its nodule's sphere (as the cache's
    ``nodule_z_range`` counts them before widening them by the mask)."""
    nodules = cache.nodules.set_index("nodule_uid")
    known = patches["nodule_uid"].isin(nodules.index).to_numpy()
    at = nodules.reindex(patches["nodule_uid"])
    reach = at["diameter_mm"].to_numpy(float) / 2 / cache.config.spacing_zyx[0]
    z, centre = patches["z"].to_numpy(float), at["center_z"].to_numpy(float)
    return known & (z >= np.ceil(centre - reach)) & (z <= np.floor(centre + reach))


def sampling_weights(meta: pd.DataFrame, fine_ok: np.ndarray, positive_fraction: float, fine_share: float,
                     small_boost: float, nonsolid_boost: float = 1.0) -> np.ndarray:
    """Per-patch probabilities. Nodule patches get ``positive_fraction`` of the mass, and of
    that, fine-mask patches get ``fine_share`` (few scans keep masks: without this they
    would be rare in a batch). Inside each group every nodule weighs the same whatever its
    number of slices, small ones (< 6 mm) ``small_boost`` x more, part-solid and ground-glass
    ones ``nonsolid_boost`` x more (the rare kinds the nets miss most)."""
    negative = meta["negative"].to_numpy().astype(bool)
    fine_ok = np.asarray(fine_ok, dtype=bool)
    groups = {"fine": ~negative & fine_ok, "coarse": ~negative & ~fine_ok, "negative": negative}
    # where one kind of nodule patch is absent (full supervision, fine only), the other takes
    # its share: every arm's batches hold the same share of nodules
    fine_share = fine_share if groups["coarse"].any() else 1.0 if groups["fine"].any() else 0.0
    share = {"fine": positive_fraction * fine_share, "coarse": positive_fraction * (1 - fine_share),
             "negative": 1.0 - positive_fraction}
    weights = np.zeros(len(meta))
    for name, members in groups.items():
        if not members.any():
            continue
        if name == "negative":
            w = np.ones(members.sum())
        else:
            pos = meta[members]
            w = 1.0 / pos.groupby("nodule_uid")["nodule_uid"].transform("size").to_numpy()
            w = w * np.where(pos["diameter_mm"].to_numpy() < SMALL_NODULE_MM, small_boost, 1.0)
            w = w * np.where(pos["texture"].to_numpy(dtype=float) <= PART_SOLID_MAX, nonsolid_boost, 1.0)
        weights[members] = w / w.sum() * share[name]
    return weights / weights.sum()  # no negatives (or no nodules): the others take it all


class EpochSampler(Sampler):
    """Draws ``num_samples`` (position, augmentation seed) pairs per epoch with replacement,
    seeded by (seed, epoch): reproducible, resumable mid-epoch, and split across DDP ranks."""

    def __init__(self, weights: np.ndarray, num_samples: int, seed: int, rank: int = 0, world: int = 1):
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.num_samples, self.seed, self.rank, self.world = num_samples, seed, rank, world
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        total = self.num_samples * self.world
        picks = torch.multinomial(self.weights, total, replacement=True, generator=g)
        seeds = torch.randint(0, 2**31 - 1, (total,), generator=g)
        picks, seeds = picks[self.rank::self.world], seeds[self.rank::self.world]
        for i in range(self.skip, self.num_samples):
            yield int(picks[i]), int(seeds[i])

    def __len__(self) -> int:
        return self.num_samples - self.skip


class PatchDataset(Dataset):
    """Items are (position in the selection, augmentation seed) from :class:`EpochSampler`,
    or a plain position (no augmentation) for evaluation.

    For a prompted model (``prompt_dropout`` not None) the image gets one more channel, the
    coordinates' prompt made from the (augmented) sphere distance, as inference makes it
    from the given centre and diameter; a ``prompt_dropout`` share of the samples get the
    no-coordinates prompt instead, as in whole-scan search."""

    def __init__(self, cache: PatchCache, selection: PatchSelection, augmenter: Augmenter | None = None,
                 views: int = 1, soft_targets=None, prompt_dropout: float | None = None):
        self.cache, self.sel, self.augmenter, self.views = cache, selection, augmenter, views
        self.prompt_dropout = prompt_dropout
        self.window = tuple(cache.attrs["window"])
        self.soft = soft_targets     # optional: .get(cache_row) -> (P, P) float or None
        self.radius_mm = cache.patches["diameter_mm"].to_numpy(dtype=np.float32) / 2  # 0 for negatives
        self.has_prior = cache.patches["has_prior"].to_numpy(dtype=bool)

    def __len__(self) -> int:
        return len(self.sel.indices)

    def __getitem__(self, item):
        pos, seed = item if isinstance(item, tuple) else (item, None)
        row = int(self.sel.indices[pos])
        patch = self.cache.patch(row)
        image = normalise(patch["image"], self.window)
        targets = {"fine": patch["fine"].astype(np.float32), "prior": patch["prior"].astype(np.float32),
                   "coarse": patch["coarse"].astype(np.float32),
                   "coarse_dist": patch["coarse_dist"].astype(np.float32) / DIST_UNITS_PER_MM}
        soft = self.soft.get(row) if self.soft is not None else None
        if soft is not None:
            targets["soft"] = soft.astype(np.float32)
        if self.augmenter is not None and seed is not None:
            images, targets = self.augmenter(image, targets, seed, views=self.views)
            for name in ("fine", "prior", "coarse"):
                targets[name] = (targets[name] >= 0.5).astype(np.float32)
        else:
            images = [image] * self.views
        if self.prompt_dropout is not None:
            dropped = seed is not None and np.random.default_rng(seed).random() < self.prompt_dropout
            prompt = prompt_channel(None if dropped else targets["coarse_dist"], image.shape[1:])
            images = [np.concatenate([img, prompt[None]], axis=0) for img in images]
        out = {"image": torch.from_numpy(images[0]), "index": row,
               "fine_ok": torch.tensor(float(self.sel.fine_ok[pos])),
               "prior_ok": torch.tensor(float(self.has_prior[row])),
               "radius_mm": torch.tensor(float(self.radius_mm[row]))}
        if self.views > 1:
            out["image_b"] = torch.from_numpy(images[1])
        for name, value in targets.items():
            out[name] = torch.from_numpy(np.ascontiguousarray(value))[None]
        out["soft_ok"] = torch.tensor(float(soft is not None))
        if soft is None and self.soft is not None:
            out["soft"] = torch.zeros_like(out["fine"])
        return out
