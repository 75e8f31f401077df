"""Acquisition: the slice profile, the reconstruction kernel and the noise of one scan.

Kernels run from soft to sharp. A soft kernel blurs more and correlates its noise; a sharp
(lung or bone) kernel keeps edges, overshoots them (a dark and a bright band either side of
a strong edge, as unsharp masking gives) and shows more, finer-grained noise. Each scan draws
one kernel and a noise level from that kernel's range (20-80 HU over the four built-in
kernels, as between iterative and filtered back-projection screening protocols).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from src.phantom.shapes import GAUSS_TRUNCATE, Grid

HU_MIN, HU_MAX = -1024.0, 3071.0
OVERSHOOT_WIDTH = 3.0                # the overshoot's wide blur, x the kernel's


@dataclass(frozen=True)
class ScannerProfile:
    """How one scanner/protocol degrades the ideal image.

    noise_sd_hu:   range of the standard deviation of the noise (after correlation), drawn per scan.
    noise_corr_px: in-plane gaussian sigma (pixels) that correlates the noise; 0 = white.
    psf_sigma_mm:  in-plane gaussian blur of the reconstruction kernel, mm.
    overshoot:     edge enhancement of sharp kernels: (1 + a) blur - a wide blur.
    slice_fwhm_factor: the slice profile is a gaussian along z whose FWHM is the scan's
                   slice thickness times this (> 1: a wider slice profile than nominal).
    """
    name: str
    noise_sd_hu: tuple[float, float]
    noise_corr_px: float
    psf_sigma_mm: float
    overshoot: float = 0.0
    slice_fwhm_factor: float = 1.0


PROFILES: dict[str, ScannerProfile] = {
    "soft": ScannerProfile("soft", (20.0, 32.0), noise_corr_px=1.5, psf_sigma_mm=0.75, slice_fwhm_factor=1.2),
    "standard": ScannerProfile("standard", (28.0, 45.0), noise_corr_px=1.0, psf_sigma_mm=0.5, overshoot=0.1),
    "sharp": ScannerProfile("sharp", (45.0, 65.0), noise_corr_px=0.7, psf_sigma_mm=0.35, overshoot=0.3),
    "lung": ScannerProfile("lung", (60.0, 80.0), noise_corr_px=0.5, psf_sigma_mm=0.3, overshoot=0.5),
    # only on request (robustness conditions): an ultra-low-dose protocol at the noisy end of clinical CT
    "ultralow_dose": ScannerProfile("ultralow_dose", (70.0, 70.0), noise_corr_px=0.8, psf_sigma_mm=0.4,
                                    overshoot=0.1),
}
DEFAULT_PROFILES = ("lung", "sharp", "soft", "standard")   # what the built-in dataset draws from


def gaussian_taps(sigma: float) -> np.ndarray:
    """Normalised gaussian kernel truncated at GAUSS_TRUNCATE sigma (as scipy builds it)."""
    radius = int(GAUSS_TRUNCATE * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / max(sigma, 1e-6)) ** 2)
    return taps / taps.sum()


def _blur_z(volume: np.ndarray, sigma: float) -> None:
    """In-place gaussian along z (edges repeat), slice by slice: the strided 1-D filter
    along axis 0 is several times slower on a volume this size."""
    taps = gaussian_taps(sigma)
    radius = len(taps) // 2
    if radius == 0:
        return
    source = volume.copy()
    last = volume.shape[0] - 1
    for z in range(volume.shape[0]):
        out = volume[z]
        np.multiply(source[z], taps[radius], out=out)
        for k in range(1, radius + 1):
            out += taps[radius + k] * (source[max(z - k, 0)] + source[min(z + k, last)])


def blur(hu: np.ndarray, grid: Grid, slice_thickness_mm: float, profile: ScannerProfile) -> None:
    """Slice profile (gaussian, FWHM = slice thickness x profile factor) along z, then the
    kernel in-plane, in place."""
    fwhm_to_sigma = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    _blur_z(hu, slice_thickness_mm * profile.slice_fwhm_factor * fwhm_to_sigma / grid.spacing[0])
    sigma = (0.0, profile.psf_sigma_mm / grid.spacing[1], profile.psf_sigma_mm / grid.spacing[2])
    ndimage.gaussian_filter(hu, sigma, output=hu, mode="nearest", truncate=GAUSS_TRUNCATE)
    if profile.overshoot > 0:
        wide = ndimage.gaussian_filter(hu, tuple(OVERSHOOT_WIDTH * s for s in sigma), mode="nearest",
                                       truncate=GAUSS_TRUNCATE)
        hu *= 1.0 + profile.overshoot
        wide *= profile.overshoot
        hu -= wide


def add_noise(hu: np.ndarray, grid: Grid, profile: ScannerProfile, noise_sd_hu: float,
              rng: np.random.Generator) -> np.ndarray:
    """Correlated gaussian noise of sd ``noise_sd_hu``, clipping and rounding: int16 HU."""
    noise = rng.standard_normal(grid.shape, dtype=np.float32)
    kept_sd = 1.0
    if profile.noise_corr_px > 0:
        corr = profile.noise_corr_px
        ndimage.gaussian_filter(noise, (0.0, corr, corr), output=noise, truncate=GAUSS_TRUNCATE)
        # A 1-D kernel keeps sum(taps^2) of the variance; two axes keep its square, so the sd
        # left is sum(taps^2) itself.
        kept_sd = float(np.sum(gaussian_taps(corr) ** 2))
    noise *= noise_sd_hu / kept_sd
    hu += noise
    del noise
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    np.rint(hu, out=hu)
    return hu.astype(np.int16)
