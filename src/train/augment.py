"""Augmentation with albumentations, the same for all k slices and every target.

Geometry (flips, rot90, affine) is drawn once and applied to the image (H, W, k) and to all
targets together. Targets travel as float maps with *linear* interpolation, so soft
pseudo-labels stay soft; binary targets are re-thresholded at 0.5 afterwards. Intensity
augmentation (brightness/contrast, noise, blur) acts on the normalised image only, and can
be drawn twice on the same geometry: two views for the mean teacher.

Seeding: each call takes an explicit seed (from the sampler), so a sample's augmentation
depends only on (run seed, epoch, position) - not on worker count or timing.
"""
from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # 2.0.8 would check PyPI on import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from src.config import AugmentConfig  # noqa: E402


class Augmenter:
    def __init__(self, cfg: AugmentConfig):
        geometric = []
        if cfg.flip:
            geometric += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
        if cfg.rot90:
            geometric.append(A.RandomRotate90(p=0.5))
        if cfg.affine_p > 0:
            geometric.append(A.Affine(scale=(1 - cfg.scale, 1 + cfg.scale),
                                      translate_percent=(-cfg.shift, cfg.shift),
                                      rotate=(-cfg.rotate_deg, cfg.rotate_deg),
                                      interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_LINEAR,
                                      border_mode=cv2.BORDER_REFLECT_101, p=cfg.affine_p))
        self.geometric = A.Compose(geometric, mask_interpolation=cv2.INTER_LINEAR)
        self.photometric = A.Compose([
            A.RandomBrightnessContrast(brightness_limit=0.08, contrast_limit=0.15, p=cfg.intensity_p),
            A.GaussNoise(std_range=(0.005, 0.03), p=cfg.noise_p),
            A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.3, 0.8), p=cfg.blur_p),
        ])

    def __call__(self, image: np.ndarray, targets: dict[str, np.ndarray], seed: int,
                 views: int = 1) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """image: (k, H, W) float32 in [0, 1]; targets: name -> (H, W) float32.
        Returns ``views`` photometric variants of one geometric draw, and the targets."""
        names = list(targets)
        self.geometric.set_random_seed(seed)
        out = self.geometric(image=np.ascontiguousarray(image.transpose(1, 2, 0)),
                             masks=[targets[n] for n in names])
        geo_image = out["image"]
        images = []
        for v in range(views):
            self.photometric.set_random_seed(seed + 7919 * (v + 1))
            img = self.photometric(image=geo_image)["image"]
            images.append(np.ascontiguousarray(np.clip(img, 0.0, 1.0).transpose(2, 0, 1), dtype=np.float32))
        return images, {n: np.asarray(m, dtype=np.float32) for n, m in zip(names, out["masks"])}
