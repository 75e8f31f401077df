"""The nodule groups every table reports by: size bins and LIDC texture classes."""
from __future__ import annotations

import numpy as np

SIZE_BINS_MM = (3.0, 6.0, 10.0, 20.0)          # 3-6, 6-10, 10-20, >=20 mm
SIZE_BIN_LABELS = ("3-6", "6-10", "10-20", ">=20")
TEXTURE_LABELS = ("solid", "part-solid", "ground-glass", "unknown")


def size_bin(diameter_mm: float) -> str:
    if diameter_mm < SIZE_BINS_MM[0]:
        return "<3"
    idx = int(np.searchsorted(SIZE_BINS_MM, diameter_mm, side="right")) - 1
    return SIZE_BIN_LABELS[idx]


def texture_class(texture: float) -> str:
    """LIDC texture rating -> ground glass (<=2), part solid (<=3.5), solid."""
    if not np.isfinite(texture):
        return "unknown"
    return "ground-glass" if texture <= 2 else "part-solid" if texture <= 3.5 else "solid"
