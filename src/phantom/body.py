"""The drawn chest: every per-scan size and HU value, and the body, wall, bones and
mediastinum of one axial slice.

* body: a super-ellipse outline (skin, subcutaneous fat, muscle), a curved patient table;
* chest wall: the thoracic cavity lies a drawn wall thickness inside the skin; oblique ribs
  cross each axial slice as short curved segments; sternum in front, vertebra behind
  (body, discs, canal, posterior elements);
* mediastinum: fat holding trachea, oesophagus, aorta (ascending, arch, descending),
  pulmonary trunk and arteries, SVC, supra-aortic vessels, and the heart (an ellipsoid,
  anterior-left, in the lower chest).

Everything is drawn in the anatomy frame (c, v, u) of ``src.phantom.shapes``; the lungs
(``lungs.py``) fill what the cavity leaves.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from src.phantom.shapes import Capsule, Ellipse, Shape, grid_level, union_level

# ----------------------------------------------------------------------------- HU values
HU_AIR = -1000.0
HU_TABLE = 80.0                      # carbon-fibre table shell
HU_SKIN = 45.0
HU_FAT = -100.0                      # subcutaneous fat
HU_MUSCLE = 50.0
HU_SOFT_TISSUE = 55.0                # whatever fills the cavity outside lungs and mediastinum (liver, neck)
HU_MEDIASTINAL_FAT = -90.0
HU_OESOPHAGUS = 40.0
HU_AIRWAY_WALL_SOLID = 40.0          # trachea wall as drawn in the 2-D mediastinum
HU_BLOOD = (35.0, 50.0)              # unenhanced blood pool, drawn per scan
HU_CONTRAST_BLOOD = (120.0, 160.0)   # enhanced blood pool, drawn per scan
CONTRAST_PROBABILITY = 0.4
HU_MYOCARDIUM = 55.0
HU_CORTEX = (700.0, 1000.0)          # cortical bone, drawn per scan
HU_MARROW = (200.0, 300.0)           # rib / sternum marrow, drawn per scan
HU_VERTEBRA = 300.0                  # cancellous vertebral body
HU_DISC = 85.0
HU_CANAL = 20.0
HU_CARTILAGE = 120.0
HU_LUNG = (-870.0, -830.0)           # parenchyma, drawn per scan
HU_LUNG_GRAVITY = (25.0, 70.0)       # extra density at the most dependent (posterior) lung
HU_LUNG_WAVE = 10.0                  # amplitude of each low-frequency parenchymal wave
LUNG_WAVE_NUMBER = 0.03              # rad/mm, sd of the waves' wave-vector components
HU_VESSEL = (30.0, 60.0)             # intrapulmonary vessels (kept unenhanced: hard negatives)

# ----------------------------------------------------------------------------- sizes, mm
BODY_HALF_WIDTH_MM = (150.0, 180.0)
BODY_HALF_AP_MM = (105.0, 135.0)
BODY_EXPONENT_ANTERIOR = (1.9, 2.2)  # super-ellipse exponents: back flatter than front
BODY_EXPONENT_POSTERIOR = (2.4, 2.9)
BODY_WOBBLE = 0.04                   # relative slow change of the outline along z
SKIN_MM = 2.0
FAT_MM = (4.0, 18.0)
MUSCLE_MM = (7.0, 13.0)
PECTORAL_MM = 9.0                    # extra anterior muscle in the upper chest
SHOULDER_MM = 22.0                   # extra lateral muscle at the apex: the thorax is a cone
RIB_HALF_THICKNESS_MM = (3.5, 4.8)   # radial
RIB_HALF_HEIGHT_MM = (4.5, 6.0)      # cranio-caudal
RIB_SPACING_MM = (19.0, 24.0)        # between successive ribs at the spine
RIB_DROP_MM = (70.0, 95.0)           # how much lower a rib's front is than its back
RIB_COUNT = 12
RIB_FIRST_DEPTH_MM = (-14.0, -6.0)   # first rib at the spine, relative to the lung apex
RIB_MIN_ANGLE = 0.2                  # rad from the posterior midline: ribs meet the spine here
# Ribs 1-7 reach the sternum through cartilage, 8-10 the costal margin, 11-12 float (rad).
RIB_END = (np.pi - 0.2,) * 7 + (0.8 * np.pi,) * 3 + (0.6 * np.pi, 0.45 * np.pi)
RIB_CARTILAGE = (0.8 * np.pi,) * 7 + (0.68 * np.pi,) * 3 + (np.pi,) * 2
CORTEX_MM = 1.5
PARASPINAL_MM = (35.0, 48.0)         # skin-fat to spinal canal at the midline
CANAL_RADIUS_MM = (7.0, 8.5)
VERTEBRA_RADIUS_MM = (15.0, 19.0)
VERTEBRA_PERIOD_MM = (24.0, 30.0)    # vertebral body + disc
DISC_MM = (5.0, 7.0)
LAMINA_RADIUS_MM = 3.5               # posterior arch, as capsules around the canal
SPINOUS_PROCESS_MM = (19.0, 4.0)     # length, radius
TRANSVERSE_PROCESS_MM = (24.0, 5.0)
PEDICLE_RADIUS_MM = 4.0
ARCH_FRACTION = 0.7                  # of each vertebral level cut through the posterior arch
STERNUM_HALF_WIDTH_MM = (14.0, 19.0)
STERNUM_HALF_THICKNESS_MM = 6.0
STERNUM_TOP_ABOVE_CARINA_MM = 45.0
MANUBRIUM_MM = (40.0, 0.6)           # height over which the top widens, and by how much
TABLE_GAP_MM = (3.0, 25.0)
TABLE_THICKNESS_MM = 5.0
TABLE_HALF_WIDTH_MM = 230.0
TABLE_CURVATURE_MM = 700.0           # radius of the table's trough

LUNG_LENGTH_MM = (230.0, 290.0)      # apex to the posterior costophrenic recess
APEX_CAP_MM = (70.0, 90.0)           # depth at which the rounded lung apex reaches APEX_RADIUS
CARINA_DEPTH = (0.26, 0.32)          # fractions of the lung length
RIGHT_DOME_DEPTH = (0.66, 0.72)
LEFT_DOME_EXTRA_MM = (10.0, 25.0)    # left hemidiaphragm lies lower
DOME_DROP_MM = (60.0, 80.0)          # diaphragm drop at DOME_REFERENCE_MM from its ridge ...
DOME_CENTRAL_DIP_MM = 25.0           # the central tendon under the heart lies below both cupolas
MEDIASTINUM_BELOW_DOME_MM = 40.0     # the mediastinal fat still separates the lowest lung recesses
PLEURAL_GAP_MM = 2.5                 # lung kept this far from mediastinal structures
MEDIASTINUM_FAT_MM = 6.0             # fat shown around mediastinal structures
CENTRAL_BAND_MM = (7.0, 12.0)        # half-width of the mediastinum between the lungs
TRACHEA_RADIUS_MM = (7.5, 10.0)      # lumen
TRACHEA_WALL_MM = 2.0
AORTA_RADIUS_MM = (13.0, 16.5)
DESCENDING_AORTA_RADIUS_MM = (11.0, 13.5)
OESOPHAGUS_HALF_AXES_MM = (9.0, 6.0)
OESOPHAGUS_GAP_MM = 8.0              # oesophagus centre in front of the vertebral body
ASCENDING_AORTA_GAP_MM = (18.0, 26.0)  # between trachea and ascending aorta
PULMONARY_TRUNK_RADIUS_MM = 13.0
PULMONARY_ARTERY_RADIUS_MM = 9.0     # right / left arteries running out to the hila
SVC_HALF_AXES_MM = (9.0, 8.0)
ARCH_ABOVE_CARINA_MM = 20.0          # centre of the aortic arch
# Supra-aortic arteries and brachiocephalic veins: (u, mm in front of the trachea, half-axes).
SUPRA_AORTIC_VESSELS = ((-12.0, 10.0, 6.0, 6.0), (5.0, 12.0, 4.5, 4.5), (18.0, -7.0, 5.0, 5.0),
                        (-28.0, 18.0, 8.0, 7.0), (24.0, 22.0, 7.0, 6.0))
HEART_TOP_BELOW_CARINA_MM = (30.0, 40.0)
HEART_CENTRE_U_MM = (22.0, 35.0)     # left of the midline
HEART_CENTRE_V = -0.28               # of the body half-AP: in front
HEART_TILT_DEG = (30.0, 45.0)        # long axis toward the left front
HEART_HALF_AXES_MM = ((58.0, 70.0), (40.0, 48.0))
PERICARDIAL_FAT_MM = 3.0
MYOCARDIUM_MM = 9.0                  # seen around enhanced chambers only
HILUM_OFFSET_MM = (45.0, 10.0, 22.0)  # lateral, posterior, caudal (from carina) of the hila


@dataclass(frozen=True)
class Anatomy:
    """One drawn chest, in the anatomy frame (mm; see src.phantom.shapes)."""
    body_a: float
    body_b: float
    body_p_ant: float
    body_p_post: float
    body_phase: float
    fat: float
    muscle: float
    lung_length: float
    apex_cap: float
    c_carina: float
    c_dome: tuple[float, float]         # right, left dome tops
    dome_drop: float                    # diaphragm drop at DOME_REFERENCE_MM from the ridge
    rib_half_thickness: float
    rib_half_height: float
    rib_spacing: float
    rib_drop: float
    rib_c0: float
    rib_jitter: np.ndarray              # (2, RIB_COUNT) per side, mm
    vertebra: Ellipse
    canal: Ellipse
    vertebra_period: float
    vertebra_phase: float
    disc: float
    spine_wall: float                   # skin to vertebral body centre at the midline
    sternum_half_width: float
    trachea: Ellipse                   # lumen
    oesophagus: Ellipse
    descending_aorta: Ellipse
    ascending_aorta: Ellipse
    pulmonary_trunk: Ellipse
    svc: Ellipse
    central_band: float
    heart: Ellipse                     # in-plane section at its widest
    heart_c: tuple[float, float]        # heart top and bottom depth
    hila: np.ndarray                    # (2, 3) right, left hilum (c, v, u)
    table_gap: float
    hu_cortex: float
    hu_marrow: float
    hu_blood: float
    hu_lung: float
    hu_gravity: float
    hu_vessel: float
    lung_waves: np.ndarray              # (3, 5): ku, kv, kc, phase, amplitude
    contrast: bool                      # enhanced blood pool


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    """Every per-scan size and HU value; the same rng state gives the same chest."""
    U = rng.uniform
    body_a, body_b = U(*BODY_HALF_WIDTH_MM), U(*BODY_HALF_AP_MM)
    fat, muscle = U(*FAT_MM), U(*MUSCLE_MM)
    length = U(*LUNG_LENGTH_MM)
    c_carina = length * U(*CARINA_DEPTH)
    c_dome_r = length * U(*RIGHT_DOME_DEPTH)
    c_dome = (c_dome_r, c_dome_r + U(*LEFT_DOME_EXTRA_MM))

    # Spine from the back: skin, fat, paraspinal muscle, canal, then the vertebral body.
    period = U(*VERTEBRA_PERIOD_MM)
    canal_r = U(*CANAL_RADIUS_MM)
    vb_r = U(*VERTEBRA_RADIUS_MM)
    v_canal = body_b - SKIN_MM - fat - U(*PARASPINAL_MM)
    v_vb = v_canal - canal_r - 2.0 - 0.95 * vb_r
    vertebra = Ellipse(0.0, v_vb, 1.15 * vb_r, 0.95 * vb_r)
    canal = Ellipse(0.0, v_canal, canal_r, canal_r)

    # Mediastinum, from back to front (positions follow the real neighbourhoods).
    v_front_vb = v_vb - vertebra.b
    oesophagus = Ellipse(U(3.0, 9.0), v_front_vb - OESOPHAGUS_GAP_MM, *OESOPHAGUS_HALF_AXES_MM)
    trachea_r = U(*TRACHEA_RADIUS_MM)
    trachea = Ellipse(U(-4.0, 1.0), oesophagus.cv - oesophagus.b - TRACHEA_WALL_MM - trachea_r - 1.0,
                       trachea_r, 0.9 * trachea_r)
    da_r = U(*DESCENDING_AORTA_RADIUS_MM)                          # left of the vertebral body's front
    descending = Ellipse(0.55 * vertebra.a + da_r, v_front_vb + 0.3 * vertebra.b, da_r, da_r)
    aa_r = U(*AORTA_RADIUS_MM)
    ascending = Ellipse(U(-14.0, -6.0), trachea.cv - trachea_r - U(*ASCENDING_AORTA_GAP_MM) - aa_r, aa_r, aa_r)
    trunk_r = PULMONARY_TRUNK_RADIUS_MM                            # left of and in front of the aorta
    trunk = Ellipse(ascending.cu + aa_r + trunk_r, ascending.cv - 2.0, trunk_r, trunk_r)
    svc = Ellipse(ascending.cu - aa_r - SVC_HALF_AXES_MM[0], ascending.cv + 9.0, *SVC_HALF_AXES_MM)

    c_heart_top = c_carina + U(*HEART_TOP_BELOW_CARINA_MM)
    c_heart_bottom = (c_dome[0] + c_dome[1]) / 2.0 + DOME_CENTRAL_DIP_MM + U(0.0, 8.0)   # on the central tendon
    heart = Ellipse(U(*HEART_CENTRE_U_MM), HEART_CENTRE_V * body_b, U(*HEART_HALF_AXES_MM[0]),
                     U(*HEART_HALF_AXES_MM[1]), -float(np.deg2rad(U(*HEART_TILT_DEG))))

    lateral, posterior, caudal = HILUM_OFFSET_MM                   # the left hilum lies lower
    hila = np.array([[c_carina + caudal - 4.0, trachea.cv + posterior, -lateral],
                     [c_carina + caudal + 6.0, trachea.cv + posterior + 4.0, lateral + 5.0]])

    contrast = bool(rng.random() < CONTRAST_PROBABILITY)
    waves = np.column_stack([rng.normal(0.0, LUNG_WAVE_NUMBER, (3, 3)), U(0.0, 2 * np.pi, 3),
                             np.full(3, HU_LUNG_WAVE)])
    return Anatomy(
        body_a=body_a, body_b=body_b, body_p_ant=U(*BODY_EXPONENT_ANTERIOR),
        body_p_post=U(*BODY_EXPONENT_POSTERIOR), body_phase=U(0.0, 2 * np.pi), fat=fat, muscle=muscle,
        lung_length=length, apex_cap=U(*APEX_CAP_MM), c_carina=c_carina, c_dome=c_dome,
        dome_drop=U(*DOME_DROP_MM),
        rib_half_thickness=U(*RIB_HALF_THICKNESS_MM), rib_half_height=U(*RIB_HALF_HEIGHT_MM),
        rib_spacing=U(*RIB_SPACING_MM), rib_drop=U(*RIB_DROP_MM), rib_c0=U(*RIB_FIRST_DEPTH_MM),
        rib_jitter=rng.normal(0.0, 2.0, (2, RIB_COUNT)), vertebra=vertebra, canal=canal,
        vertebra_period=period, vertebra_phase=U(0.0, period), disc=U(*DISC_MM), spine_wall=body_b - v_vb,
        sternum_half_width=U(*STERNUM_HALF_WIDTH_MM), trachea=trachea, oesophagus=oesophagus,
        descending_aorta=descending, ascending_aorta=ascending, pulmonary_trunk=trunk, svc=svc,
        central_band=U(*CENTRAL_BAND_MM), heart=heart, heart_c=(c_heart_top, c_heart_bottom), hila=hila,
        table_gap=U(*TABLE_GAP_MM), hu_cortex=U(*HU_CORTEX), hu_marrow=U(*HU_MARROW),
        hu_blood=U(*(HU_CONTRAST_BLOOD if contrast else HU_BLOOD)), hu_lung=U(*HU_LUNG),
        hu_gravity=U(*HU_LUNG_GRAVITY), hu_vessel=U(*HU_VESSEL), lung_waves=waves, contrast=contrast)


# ----------------------------------------------------------------------------- 2-D fields of one slice
def body_factor(anat: Anatomy, c: float) -> float:
    """Uniform scale of the body outline at depth c (it changes slowly along z)."""
    return 1.0 + BODY_WOBBLE * float(np.sin(c / 60.0 + anat.body_phase))


def wall_profile(anat: Anatomy, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Around the body (theta: 0 at the back, pi at the front): skin + fat thickness, skin to
    pleura thickness (skin, fat, muscle, rib layer, and the paraspinal bulge behind), and
    the extra wall of the upper chest (pectoral and shoulder-girdle muscles)."""
    fat_end = SKIN_MM + anat.fat * (1.0 + 0.3 * np.cos(2.0 * theta))     # fat thicker front and back
    muscle = anat.muscle * (0.55 + 0.45 * np.abs(np.cos(theta)))        # thin laterally
    wall = fat_end + muscle + 2.0 * anat.rib_half_thickness + 2.0
    wall = wall + np.maximum(anat.spine_wall - wall, 0.0) * np.exp(-(theta / 0.32) ** 2)
    upper = PECTORAL_MM * np.exp(-((theta - 0.75 * np.pi) / 0.45) ** 2) + SHOULDER_MM * np.sin(theta) ** 4
    return fat_end, wall, upper


def upper_weight(anat: Anatomy, c: float) -> float:
    """1 at the apex, 0 from mid-chest down."""
    return float(np.clip(1.0 - c / (0.5 * anat.lung_length), 0.0, 1.0))


@dataclass(frozen=True)
class BodyPlane:
    """The depth-independent 2-D fields of an axial grid u (nx,) x v (ny,) (anatomy mm).
    The body outline only scales uniformly with depth, so its shape is computed once."""
    u: np.ndarray
    v: np.ndarray
    rho: np.ndarray                     # distance from the body centre
    rho_over_r: np.ndarray              # rho / normalised super-ellipse radius: skin depth = f * this - rho
    theta: np.ndarray                   # angle from the posterior midline
    fat_end: np.ndarray
    wall: np.ndarray
    upper_wall: np.ndarray              # extra wall at the apex, see wall_profile
    table: np.ndarray                   # bool
    rib_sector: np.ndarray              # bool: angles where ribs run (clear of the spine)


def body_plane(anat: Anatomy, u: np.ndarray, v: np.ndarray) -> BodyPlane:
    u, v = np.asarray(u, dtype=np.float32), np.asarray(v, dtype=np.float32)
    U, V = u[None, :], v[:, None]
    # Super-ellipse, flatter behind: r is homogeneous of degree 1, so the skin lies at rho / r.
    posterior = V > 0
    p = np.where(posterior, anat.body_p_post, anat.body_p_ant).astype(np.float32)
    au = np.abs(u / anat.body_a)
    term_u = np.where(posterior, au ** np.float32(anat.body_p_post), au ** np.float32(anat.body_p_ant))
    r = (term_u + np.abs(V / anat.body_b) ** p) ** (1.0 / p)
    rho = np.sqrt(U * U + V * V)
    theta = np.arctan2(np.abs(U), V)
    fat_end, wall, upper_wall = wall_profile(anat, theta)
    top = anat.body_b * 1.05 + anat.table_gap - U * U / (2.0 * TABLE_CURVATURE_MM)
    table = (V >= top) & (V < top + TABLE_THICKNESS_MM) & (np.abs(U) < TABLE_HALF_WIDTH_MM)
    f32 = lambda x: np.asarray(x, dtype=np.float32)   # noqa: E731
    return BodyPlane(u, v, f32(rho), f32(rho / np.maximum(r, 1e-6)), f32(theta), f32(fat_end), f32(wall),
                     f32(upper_wall), table, theta > RIB_MIN_ANGLE)


def mediastinal_shapes(anat: Anatomy, c: float) -> list[tuple[Shape, float]]:
    """The mediastinal structures cut by the slice at depth c, with their HU, in paint order."""
    shapes: list[tuple[Shape, float]] = []
    blood = anat.hu_blood
    if c < max(anat.c_dome) + MEDIASTINUM_BELOW_DOME_MM:           # keeps the lowest recesses apart
        fill = HU_MEDIASTINAL_FAT if c < anat.heart_c[1] else HU_SOFT_TISSUE
        shapes.append((Capsule(0.0, -anat.body_b, 0.0, anat.vertebra.cv, anat.central_band), fill))
        shapes.append((anat.oesophagus, HU_OESOPHAGUS))
    tr = anat.trachea
    if c < anat.c_carina:
        shapes.append((replace(tr, a=tr.a + TRACHEA_WALL_MM, b=tr.b + TRACHEA_WALL_MM), HU_AIRWAY_WALL_SOLID))
    aa, da = anat.ascending_aorta, anat.descending_aorta
    c_arch = anat.c_carina - ARCH_ABOVE_CARINA_MM
    arch_r = 0.9 * aa.a
    if abs(c - c_arch) < arch_r:                                   # arch: a horizontal tube
        r = arch_r * np.sqrt(1.0 - ((c - c_arch) / arch_r) ** 2)
        shapes.append((Capsule(aa.cu, aa.cv, da.cu, da.cv, max(r, 1.0)), blood))
    if c > c_arch:
        shapes.append((da, blood))
    if c_arch < c < anat.heart_c[0] + 15.0:
        shapes.append((aa, blood))
    if c < c_arch - arch_r + 5.0:                                  # supra-aortic vessels
        shapes += [(Ellipse(u, tr.cv - tr.b - ahead, a, b), blood) for u, ahead, a, b in SUPRA_AORTIC_VESSELS]
    if c < anat.heart_c[0] + 10.0:
        shapes.append((anat.svc, blood))
    trunk = anat.pulmonary_trunk
    if anat.c_carina + 5.0 < c < anat.heart_c[0] + 10.0:
        shapes.append((trunk, blood))
    pa_r = PULMONARY_ARTERY_RADIUS_MM
    for hilum in anat.hila:                                        # pulmonary arteries to the hila
        if abs(c - hilum[0]) < pa_r:
            r = pa_r * np.sqrt(1.0 - ((c - hilum[0]) / pa_r) ** 2)
            shapes.append((Capsule(trunk.cu, trunk.cv, hilum[2] * 0.9, hilum[1], max(r, 1.0)), blood))
    top, bottom = anat.heart_c
    if top < c < bottom:
        # Rounded above, flat below where the heart sits on the diaphragm.
        t = (c - (top + bottom) / 2.0) / ((bottom - top) / 2.0)
        f = float(np.sqrt(1.0 - t * t) if t < 0 else (1.0 - t ** 4) ** 0.25)
        h = anat.heart
        if f * h.b > 3.0:
            outer = replace(h, a=h.a * f, b=h.b * f)
            shapes.append((replace(outer, a=outer.a + PERICARDIAL_FAT_MM, b=outer.b + PERICARDIAL_FAT_MM),
                           HU_MEDIASTINAL_FAT))
            shapes.append((outer, HU_MYOCARDIUM))
            if anat.contrast:                                     # chambers enhance, myocardium does not
                shapes.append((replace(outer, a=outer.a - MYOCARDIUM_MM, b=outer.b - MYOCARDIUM_MM), blood))
    return shapes


@dataclass
class BodySlice:
    """Body fields of one axial slice at depth c."""
    plane: BodyPlane
    c: float
    depth: np.ndarray                   # below the skin, mm (< 0 outside the body)
    wall: np.ndarray                    # skin to pleura, mm
    shapes: list[tuple[Shape, float]]
    mediastinum: np.ndarray             # union level of mediastinal structures and vertebral body


def body_slice(anat: Anatomy, plane: BodyPlane, c: float) -> BodySlice:
    depth = body_factor(anat, c) * plane.rho_over_r - plane.rho
    wall = plane.wall + upper_weight(anat, c) * plane.upper_wall
    shapes = mediastinal_shapes(anat, c)
    mediastinum = union_level([s for s, _ in shapes] + [anat.vertebra], plane.u, plane.v,
                              PLEURAL_GAP_MM + MEDIASTINUM_FAT_MM)
    return BodySlice(plane, c, depth, wall, shapes, mediastinum)

# ----------------------------------------------------------------------------- painting one slice
def paint_body(s: BodySlice, hu: np.ndarray) -> None:
    """Air, table, skin, subcutaneous fat, muscle; the cavity starts as soft tissue."""
    hu[s.plane.table] = HU_TABLE
    hu[s.depth >= 0] = HU_SKIN
    hu[(s.depth >= SKIN_MM) & (s.depth < s.plane.fat_end)] = HU_FAT
    hu[s.depth >= s.plane.fat_end] = HU_MUSCLE
    hu[s.depth >= s.wall] = HU_SOFT_TISSUE


def paint_mediastinum(anat: Anatomy, s: BodySlice, hu: np.ndarray) -> None:
    """Fat around the structures (above the diaphragm), then each structure (inside the
    cavity only)."""
    cavity = s.depth >= s.wall
    if s.c < anat.heart_c[1]:
        hu[cavity & (s.mediastinum < PLEURAL_GAP_MM + MEDIASTINUM_FAT_MM)] = HU_MEDIASTINAL_FAT
    for shape, value in s.shapes:
        hit = grid_level(shape, s.plane.u, s.plane.v, 0.0)
        if hit is not None:
            iv, iu, level = hit
            hu[iv, iu][(level < 0) & cavity[iv, iu]] = value


def paint_bone(hu: np.ndarray, hit: tuple[slice, slice, np.ndarray] | None, cortex_hu: float,
                inner_hu: float) -> None:
    """A bone from its grid_level: cortex CORTEX_MM thick, inner_hu inside."""
    if hit is None:
        return
    iv, iu, level = hit
    region = hu[iv, iu]
    region[level < 0] = inner_hu
    region[(level < 0) & (level > -CORTEX_MM)] = cortex_hu


def paint_spine(anat: Anatomy, s: BodySlice, hu: np.ndarray) -> None:
    """Vertebral body (or disc), canal and, over most of each level, the posterior arch."""
    phase = (s.c - anat.vertebra_phase) % anat.vertebra_period
    if phase < anat.disc:
        hit = grid_level(anat.vertebra, s.plane.u, s.plane.v, 0.0)
        if hit is not None:
            hu[hit[0], hit[1]][hit[2] < 0] = HU_DISC
    else:
        paint_bone(hu, grid_level(anat.vertebra, s.plane.u, s.plane.v, 0.0), anat.hu_cortex, HU_VERTEBRA)
    cn, vb = anat.canal, anat.vertebra
    if anat.disc < phase < anat.disc + ARCH_FRACTION * anat.vertebra_period:
        back = cn.cv + cn.b + LAMINA_RADIUS_MM
        spinous_length, spinous_r = SPINOUS_PROCESS_MM
        transverse_length, transverse_r = TRANSVERSE_PROCESS_MM
        parts = [Capsule(0.0, back, 0.0, back + spinous_length, spinous_r)]
        for side in (-1.0, 1.0):
            parts += [Capsule(side * (cn.a + 2.0), cn.cv - 3.0, side * (cn.a - 2.0), back, LAMINA_RADIUS_MM),
                      Capsule(side * 0.6 * vb.a, vb.cv + 0.6 * vb.b, side * (cn.a + 2.0), cn.cv - 2.0,
                               PEDICLE_RADIUS_MM),
                      Capsule(side * (cn.a + 3.0), cn.cv - 1.0, side * (cn.a + 3.0 + transverse_length),
                               cn.cv - 6.0, transverse_r)]
        for part in parts:
            paint_bone(hu, grid_level(part, s.plane.u, s.plane.v, 0.0), anat.hu_cortex, anat.hu_marrow)
    hit = grid_level(cn, s.plane.u, s.plane.v, 0.0)
    if hit is not None:
        hu[hit[0], hit[1]][hit[2] < 0] = HU_CANAL


def paint_ribs(anat: Anatomy, s: BodySlice, hu: np.ndarray) -> None:
    """Ribs run around the wall just outside the pleura, dropping by rib_drop from back to
    front, so a slice cuts each one over a short arc (an oblique, elongated cross-section)."""
    t = anat.rib_half_thickness
    below_wall = s.depth - s.wall
    band = (below_wall > -2.0 * t - 2.0) & (below_wall < 0.0) & s.plane.rib_sector
    iy, ix = np.nonzero(band)
    if iy.size == 0:
        return
    theta, depth = s.plane.theta[iy, ix], s.depth[iy, ix]
    side = (s.plane.u[ix] > 0).astype(np.intp)
    # Ribs leave the spine nearly level, drop steeply at the side and level off in front.
    drop = anat.rib_drop * (1.0 - np.cos(np.pi * (theta - RIB_MIN_ANGLE) / (np.pi - RIB_MIN_ANGLE))) / 2.0
    k = np.clip(np.rint((s.c - anat.rib_c0 - drop) / anat.rib_spacing), 0, RIB_COUNT - 1).astype(np.intp)
    centre_c = anat.rib_c0 + k * anat.rib_spacing + drop + anat.rib_jitter[side, k]
    q = np.hypot((depth - (s.wall[iy, ix] - 1.0 - t)) / t, (s.c - centre_c) / anat.rib_half_height)
    rib = (q < 1.0) & (theta < np.asarray(RIB_END)[k])
    cartilage = theta > np.asarray(RIB_CARTILAGE)[k]
    values = np.where(q > 1.0 - CORTEX_MM / t, anat.hu_cortex, anat.hu_marrow)
    values = np.where(cartilage, HU_CARTILAGE, values)
    hu[iy[rib], ix[rib]] = values[rib]


def paint_sternum(anat: Anatomy, s: BodySlice, hu: np.ndarray) -> None:
    """Flat bone in the anterior wall from the manubrium (wider) down to the xiphoid."""
    top, bottom = anat.c_carina - STERNUM_TOP_ABOVE_CARINA_MM, anat.heart_c[1]
    if not top < s.c < bottom:
        return
    b = anat.body_b * body_factor(anat, s.c)
    _, wall, upper = wall_profile(anat, np.array(np.pi))
    wall_front = float(wall + upper_weight(anat, s.c) * upper)
    height, widening = MANUBRIUM_MM
    width = anat.sternum_half_width * (1.0 + widening * np.clip(1.0 - (s.c - top) / height, 0.0, 1.0))
    sternum = Ellipse(0.0, -b + wall_front - 1.0 - STERNUM_HALF_THICKNESS_MM, width, STERNUM_HALF_THICKNESS_MM)
    paint_bone(hu, grid_level(sternum, s.plane.u, s.plane.v, 0.0), anat.hu_cortex, anat.hu_marrow)


def paint_body_slice(anat: Anatomy, s: BodySlice, hu: np.ndarray) -> None:
    """HU of everything but the lungs, outside in: air, body, mediastinum, bones."""
    hu.fill(HU_AIR)
    paint_body(s, hu)
    paint_mediastinum(anat, s, hu)
    paint_spine(anat, s, hu)
    paint_ribs(anat, s, hu)
    paint_sternum(anat, s, hu)
