"""The nodule groups every table reports by: size bin, LIDC texture class, attachment.

``GROUPS`` is the one list of them: every per-nodule table has one column per grouping
(``src.evaluation.cases.describe``) and every breakdown loops over it, so a grouping is
added here once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

SIZE_BINS_MM = (3.0, 6.0, 10.0, 20.0)          # 3-6, 6-10, 10-20, >=20 mm
SIZE_BIN_LABELS = ("3-6", "6-10", "10-20", ">=20")
TEXTURE_LABELS = ("solid", "part-solid", "ground-glass", "unknown")
ATTACHMENT_LABELS = ("isolated", "juxta-pleural", "juxta-vascular", "perifissural", "unknown")
UNKNOWN = "unknown"


def size_bin(diameter_mm: float) -> str:
    if diameter_mm < SIZE_BINS_MM[0]:
        return "<3"
    idx = int(np.searchsorted(SIZE_BINS_MM, diameter_mm, side="right")) - 1
    return SIZE_BIN_LABELS[idx]


GROUND_GLASS_MAX, PART_SOLID_MAX = 2.0, 3.5    # LIDC texture ratings (1-5) of the non-solid kinds


def texture_class(texture: float) -> str:
    """LIDC texture rating -> ground glass (<=2), part solid (<=3.5), solid."""
    if not np.isfinite(texture):
        return UNKNOWN
    return "ground-glass" if texture <= GROUND_GLASS_MAX else "part-solid" if texture <= PART_SOLID_MAX else "solid"


def attachment_class(value) -> str:
    """One of ATTACHMENT_LABELS ('Juxta_Pleural' reads as 'juxta-pleural'); 'unknown' where a
    table has none (LUNA16 and most hospital tables: NaN, empty) or an unrecognised one."""
    if not isinstance(value, str):
        return UNKNOWN
    label = value.strip().lower().replace("_", "-").replace(" ", "-")
    return label if label in ATTACHMENT_LABELS else UNKNOWN


@dataclass(frozen=True)
class Grouping:
    tag: str                         # prefix of its groups in long tables: "size:3-6"
    title: str                       # what its breakdown tables are headed by
    labels: tuple[str, ...]          # its groups, in report order
    source: str                      # the Nodule field (= nodule table column) it is derived from
    classify: Callable[[object], str]


GROUPS = {
    "size_bin": Grouping("size", "nodule size (mm)", SIZE_BIN_LABELS, "diameter_mm", size_bin),
    "texture": Grouping("texture", "texture", TEXTURE_LABELS, "texture", texture_class),
    "attachment": Grouping("attachment", "attachment", ATTACHMENT_LABELS, "attachment", attachment_class),
}


def nodule_groups(nodule) -> dict[str, str]:
    """A nodule's group in each grouping: the columns ``GROUPS`` names."""
    return {name: g.classify(getattr(nodule, g.source)) for name, g in GROUPS.items()}
