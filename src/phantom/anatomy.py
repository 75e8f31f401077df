"""Synthetic chest CT (HU) around real LIDC nodule shapes.

The built-in dataset keeps the radiologists' nodules and invents everything else. This
module draws one plausible chest per scan (every size in millimetres, drawn from the rng)
and renders it on the scan's own grid:

* body: a super-ellipse outline (skin, subcutaneous fat, muscle), a curved patient table;
* chest wall: the thoracic cavity lies a drawn wall thickness inside the skin; oblique ribs
  cross each axial slice as short curved segments; sternum in front, vertebra behind
  (body, discs, canal, posterior elements);
* mediastinum: fat holding trachea, oesophagus, aorta (ascending, arch, descending),
  pulmonary trunk and arteries, SVC, supra-aortic vessels, and the heart (an ellipsoid,
  anterior-left, in the lower chest);
* lungs: the cavity minus the mediastinum, the vertebral body and the diaphragm domes,
  capped at the apex, hence D-shaped and concave medially, small at apex and base;
* inside the lungs: parenchyma (~ -850 HU, denser posteriorly), a randomly branching
  vessel tree per lung grown from the hilum (Murray's law radii and angles), and a few
  generations of airways from the trachea;
* the nodules (fraction maps of the readers' contours) blended into that background. The
  nodule positions are real and the chest is not, so the chest is placed and scaled on the
  grid (a coordinate descent) until every nodule's ball of radius + 3 mm lies in the lung
  on its side; whatever still sticks out is added to that lung and closed morphologically;
* acquisition: slice-profile and in-plane blur, correlated noise, int16 rounding.

Vessel cross-sections are round, +30..+60 HU blobs of nodule size on a single slice: they
are the intended hard negatives, and some are returned as false candidates.

Frames and conventions (all arrays and voxel coordinates are (z, y, x)):

* image x grows toward the patient's left (right lung at low x, radiological display),
  image y grows posteriorly, and the slice index z grows toward the head, as in LIDC and
  LUNA16 volumes whose world z is superior;
* "volume mm" is index * spacing, per axis;
* the anatomy frame is (c, v, u): c is depth below the lung apex in mm (caudal positive),
  v and u are mm from the body centre (v posterior, u patient left), divided by the
  per-scan scale that makes the chest fit the nodules. All anatomy is drawn there.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

# ----------------------------------------------------------------------------- HU values
HU_MIN, HU_MAX = -1024.0, 3071.0
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
HU_AIRWAY_LUMEN = -990.0
HU_AIRWAY_WALL = -30.0
HU_SOLID = (0.0, 60.0)               # solid nodule, drawn per nodule
HU_GGO_FAINT = -650.0                # ground glass at texture 1
HU_GGO_DENSE = -450.0                # ground glass at texture >= 2 (rim of part-solid nodules)
HU_GGO_JITTER = 50.0
HU_SOLID_HETEROGENEITY = 12.0        # sd of the smooth texture inside solid parts
HU_GGO_HETEROGENEITY = 30.0

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
MAX_ABOVE_APEX_MM = 25.0             # how far above the lung apex a volume may start
APEX_RADIUS = 0.5                    # of the body half-width
CARINA_DEPTH = (0.26, 0.32)          # fractions of the lung length
RIGHT_DOME_DEPTH = (0.66, 0.72)
LEFT_DOME_EXTRA_MM = (10.0, 25.0)    # left hemidiaphragm lies lower
DOME_DROP_MM = (60.0, 80.0)          # diaphragm drop at DOME_REFERENCE_MM from its ridge ...
DOME_REFERENCE_MM = 90.0
DOME_POWER = 1.5                     # ... and it drops as (distance / reference) ** DOME_POWER
DOME_LATERAL = 0.4                   # of the body half-width: where each cupola is highest
DOME_V_MM = -10.0                    # the ridge sits a little anterior: the posterior recesses go deepest
DOME_CENTRAL_DIP_MM = 25.0           # the central tendon under the heart lies below both cupolas
DOME_STRETCH = (0.8, 1.1)            # front / back distances count this much: shallow anterior,
                                     # deep posterior costophrenic recesses
MEDIASTINUM_BELOW_DOME_MM = 40.0     # the mediastinal fat still separates the lowest lung recesses
APEX_LATERAL, APEX_V = 0.4, 0.15     # apex position, fractions of the body half-width / half-AP
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

VESSEL_ROOT_RADIUS_MM = (3.0, 4.5)  # segmental arteries and veins at the hilum
# Initial directions (up, posterior, lateral) of the segmental vessels, upper lobe(s) first.
SEGMENT_DIRECTIONS = ((1.0, 0.2, 0.3), (0.6, 0.8, 0.4), (0.5, -0.8, 0.4), (0.1, 0.0, 1.0), (0.05, -0.9, 0.5),
                      (-0.2, 0.9, 0.3), (-0.9, -0.4, 0.3), (-0.8, 0.0, 0.7), (-0.8, 0.6, 0.2), (-1.0, 0.1, -0.1))
SUPERIOR_VEIN_OFFSET_MM = (-10.0, -15.0, 0.0)   # (z, y, x) from the hilum: lower and in front
INFERIOR_VEIN_OFFSET_MM = (-35.0, 5.0, 0.0)
VESSEL_MIN_RADIUS_MM = 0.5
AIRWAY_ROOT_RADIUS_MM = (3.8, 5.0)
AIRWAY_MIN_RADIUS_MM = 1.4
MAIN_BRONCHUS_RADIUS_MM = (5.5, 7.0)
# Initial directions (up, posterior, lateral) of the upper, lower and middle lobe bronchi.
LOBAR_BRONCHUS_DIRECTIONS = ((1.0, -0.1, 0.7), (-1.0, 0.4, 0.5), (-0.2, -0.6, 1.0))
TAPER = 0.98                         # radius kept along one segment
VESSEL_SEGMENT_MM = ((5.0, 9.0), 2.0)  # segment length: radius x uniform(range) + extra
AIRWAY_SEGMENT_MM = ((4.0, 7.0), 4.0)
AIRWAY_WALL = (0.18, 0.5)            # wall thickness: fraction of the lumen radius, minimum mm
TREE_OUTWARD_PUSH = 0.25             # pull of each new segment away from its root ...
TREE_ROOT_BACKOFF_MM = 15.0          # ... taken as a point this far behind the root
TREE_TRIES = ((0.25, 1.0), (0.6, 1.0), (0.6, 0.5))   # (direction noise, length factor) per try
TREE_BRANCH_RATIO = (0.3, 1.0)       # minor / major child radius
TREE_ANGLE_JITTER = 0.1              # rad, around Murray's optimal branching angles
ROOT_JITTER = 0.15                   # of the segmental vessels' initial directions
LUNG_SEARCH_MM = (60.0, 2.0, 3.0)    # roots: search range and step for the lung, then go this deep
GROWTH_GRID_MM = 3.0                 # coarse lung map the trees grow in
GAUSS_TRUNCATE = 3.0                 # gaussian kernels end at this many sigma
NODULE_EDGE_MM = 0.4                 # default blur of the reader-fraction map (partial-volume edge)
NODULE_TEXTURE_MM = 1.5              # grain of the nodules' internal heterogeneity
NODULE_CLEARANCE_MM = 3.0            # lungs must contain the ball radius + this
FIT_MARGIN_MM = 1.0                  # test points must lie this deep in the lung
FIT_MAX_EVALUATIONS = 100
SMALL_GRID = 64                      # grids up to this many points skip the per-shape boxes
FIT_CENTRE_X_MM = (-40.0, 40.0)      # body centre from the image centre (right, posterior)
FIT_CENTRE_Y_MM = (-40.0, 70.0)
FIT_SCALE = (0.9, 1.45)
CLOSING_MM = 4.0                     # closing radius that blends nodule balls into a lung
NECK_SEARCH_MM = 40.0                # a ball out of the lung is joined to lung this close ...
NECK_FRACTION = 0.7                  # ... by a neck this fraction of the ball's radius
CANDIDATE_RADIUS_MM = (1.5, 4.0)     # vessels of nodule size become false candidates
CANDIDATE_COUNT = (12, 36)
CANDIDATE_SEPARATION_MM = 10.0
CANDIDATE_MIN_COSINE = 0.7           # segments this close to cranio-caudal look round on a slice
CANDIDATE_CLEARANCE_MM = 10.0        # candidates >= max(2 r, r + this) from every nodule centre


# ----------------------------------------------------------------------------- public API
@dataclass(frozen=True)
class ScannerProfile:
    """How one scanner/protocol degrades the ideal image.

    noise_sd_hu:   standard deviation of the added noise, HU (after correlation).
    noise_corr_px: in-plane gaussian sigma (pixels) that correlates the noise; 0 = white.
    psf_sigma_mm:  in-plane gaussian blur of the reconstruction kernel, mm.
    slice_fwhm_factor: the slice profile is a gaussian along z whose FWHM is the scan's
                   slice thickness times this (> 1: a wider slice profile than nominal).
    """
    name: str
    noise_sd_hu: float
    noise_corr_px: float
    psf_sigma_mm: float
    slice_fwhm_factor: float = 1.0


PROFILES: dict[str, ScannerProfile] = {
    "standard": ScannerProfile("standard", noise_sd_hu=18.0, noise_corr_px=1.0, psf_sigma_mm=0.5),
    "lowdose_sharp": ScannerProfile("lowdose_sharp", noise_sd_hu=52.0, noise_corr_px=0.6, psf_sigma_mm=0.3),
    "smooth_thick": ScannerProfile("smooth_thick", noise_sd_hu=12.0, noise_corr_px=1.6, psf_sigma_mm=0.8,
                                   slice_fwhm_factor=1.5),
    # only on request (robustness conditions): an ultra-low-dose protocol at the noisy end of clinical CT
    "ultralow_dose": ScannerProfile("ultralow_dose", noise_sd_hu=70.0, noise_corr_px=0.8, psf_sigma_mm=0.4),
}
DEFAULT_PROFILES = ("lowdose_sharp", "smooth_thick", "standard")   # what the built-in dataset draws from


@dataclass
class NoduleSpec:
    center_zyx: np.ndarray              # voxel (z, y, x), float, in the output volume
    radius_mm: float                    # half the nodule diameter
    texture: float                      # LIDC texture: 1 ground glass .. 3 part solid .. 5 solid
    fraction: np.ndarray                # float32 crop in [0, 1]: fraction of readers marking each voxel
    offset_zyx: tuple[int, int, int]    # where fraction[0, 0, 0] sits in the volume


@dataclass
class RenderedCT:
    hu: np.ndarray                      # int16 (z, y, x), HU clipped to [-1024, 3071]
    lung_labels: np.ndarray             # uint8 (z, y, x): 3 right lung, 4 left lung, 5 airways, 0 else
    vessel_candidates_zyx: np.ndarray   # (n, 3) float voxel (z, y, x) of vessel-like false candidates


RIGHT_LUNG, LEFT_LUNG, AIRWAY = 3, 4, 5


# ----------------------------------------------------------------------------- internal types
@dataclass(frozen=True)
class _Grid:
    shape: tuple[int, int, int]
    spacing: np.ndarray                 # (3,) mm, (z, y, x)

    def axis_mm(self, axis: int) -> np.ndarray:
        return np.arange(self.shape[axis], dtype=np.float64) * self.spacing[axis]


@dataclass(frozen=True)
class _Frame:
    """Places the anatomy frame (c, v, u) in volume mm (z, y, x)."""
    grid: _Grid
    scale: float                        # anatomy mm -> volume mm in-plane
    centre_x: float                     # body centre, mm right of the image centre
    centre_y: float                     # body centre, mm below the image centre
    c_top: float                        # depth below the lung apex of the top (last) slice

    @property
    def _mid(self) -> np.ndarray:
        return (np.asarray(self.grid.shape) - 1) * self.grid.spacing

    def u_of_x(self, x_mm):
        return (x_mm - self._mid[2] / 2 - self.centre_x) / self.scale

    def v_of_y(self, y_mm):
        return (y_mm - self._mid[1] / 2 - self.centre_y) / self.scale

    def c_of_z(self, z_mm):
        return self.c_top + self._mid[0] - z_mm

    def to_mm(self, cvu: np.ndarray) -> np.ndarray:
        """Anatomy (..., 3) (c, v, u) -> volume mm (..., 3) (z, y, x)."""
        c, v, u = cvu[..., 0], cvu[..., 1], cvu[..., 2]
        return np.stack([self.c_top + self._mid[0] - c,
                         v * self.scale + self.centre_y + self._mid[1] / 2,
                         u * self.scale + self.centre_x + self._mid[2] / 2], axis=-1)

    def to_anatomy(self, zyx_mm: np.ndarray) -> np.ndarray:
        return np.stack([self.c_of_z(zyx_mm[..., 0]), self.v_of_y(zyx_mm[..., 1]),
                         self.u_of_x(zyx_mm[..., 2])], axis=-1)


@dataclass(frozen=True)
class _Ellipse:
    cu: float
    cv: float
    a: float                            # half-axis along the rotated u direction
    b: float
    angle: float = 0.0                  # rad, rotation of the a-axis from +u toward +v

    def level(self, u, v):
        """Approximate signed distance (mm), negative inside."""
        du, dv = u - self.cu, v - self.cv
        if self.angle:
            cs, sn = float(np.cos(self.angle)), float(np.sin(self.angle))
            du, dv = du * cs + dv * sn, dv * cs - du * sn
        du = du / self.a
        dv = dv / self.b
        return (np.sqrt(du * du + dv * dv) - 1.0) * min(self.a, self.b)

    def bounds(self) -> tuple[float, float, float, float]:
        h = max(self.a, self.b)
        return self.cu - h, self.cu + h, self.cv - h, self.cv + h


@dataclass(frozen=True)
class _Capsule:
    u0: float
    v0: float
    u1: float
    v1: float
    r: float

    def level(self, u, v):
        eu, ev = self.u1 - self.u0, self.v1 - self.v0
        wu, wv = u - self.u0, v - self.v0
        t = np.clip((wu * eu + wv * ev) / max(eu * eu + ev * ev, 1e-9), 0.0, 1.0)
        return np.sqrt((wu - t * eu) ** 2 + (wv - t * ev) ** 2) - self.r

    def bounds(self) -> tuple[float, float, float, float]:
        return (min(self.u0, self.u1) - self.r, max(self.u0, self.u1) + self.r,
                min(self.v0, self.v1) - self.r, max(self.v0, self.v1) + self.r)


_Shape = _Ellipse | _Capsule


@dataclass(frozen=True)
class _Anatomy:
    """One drawn chest, in the anatomy frame (mm; see module docstring)."""
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
    vertebra: _Ellipse
    canal: _Ellipse
    vertebra_period: float
    vertebra_phase: float
    disc: float
    spine_wall: float                   # skin to vertebral body centre at the midline
    sternum_half_width: float
    trachea: _Ellipse                   # lumen
    oesophagus: _Ellipse
    descending_aorta: _Ellipse
    ascending_aorta: _Ellipse
    pulmonary_trunk: _Ellipse
    svc: _Ellipse
    central_band: float
    heart: _Ellipse                     # in-plane section at its widest
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


# ----------------------------------------------------------------------------- drawing the chest
def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
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
    vertebra = _Ellipse(0.0, v_vb, 1.15 * vb_r, 0.95 * vb_r)
    canal = _Ellipse(0.0, v_canal, canal_r, canal_r)

    # Mediastinum, from back to front (positions follow the real neighbourhoods).
    v_front_vb = v_vb - vertebra.b
    oesophagus = _Ellipse(U(3.0, 9.0), v_front_vb - OESOPHAGUS_GAP_MM, *OESOPHAGUS_HALF_AXES_MM)
    trachea_r = U(*TRACHEA_RADIUS_MM)
    trachea = _Ellipse(U(-4.0, 1.0), oesophagus.cv - oesophagus.b - TRACHEA_WALL_MM - trachea_r - 1.0,
                       trachea_r, 0.9 * trachea_r)
    da_r = U(*DESCENDING_AORTA_RADIUS_MM)                          # left of the vertebral body's front
    descending = _Ellipse(0.55 * vertebra.a + da_r, v_front_vb + 0.3 * vertebra.b, da_r, da_r)
    aa_r = U(*AORTA_RADIUS_MM)
    ascending = _Ellipse(U(-14.0, -6.0), trachea.cv - trachea_r - U(*ASCENDING_AORTA_GAP_MM) - aa_r, aa_r, aa_r)
    trunk_r = PULMONARY_TRUNK_RADIUS_MM                            # left of and in front of the aorta
    trunk = _Ellipse(ascending.cu + aa_r + trunk_r, ascending.cv - 2.0, trunk_r, trunk_r)
    svc = _Ellipse(ascending.cu - aa_r - SVC_HALF_AXES_MM[0], ascending.cv + 9.0, *SVC_HALF_AXES_MM)

    c_heart_top = c_carina + U(*HEART_TOP_BELOW_CARINA_MM)
    c_heart_bottom = (c_dome[0] + c_dome[1]) / 2.0 + DOME_CENTRAL_DIP_MM + U(0.0, 8.0)   # on the central tendon
    heart = _Ellipse(U(*HEART_CENTRE_U_MM), HEART_CENTRE_V * body_b, U(*HEART_HALF_AXES_MM[0]),
                     U(*HEART_HALF_AXES_MM[1]), -float(np.deg2rad(U(*HEART_TILT_DEG))))

    lateral, posterior, caudal = HILUM_OFFSET_MM                   # the left hilum lies lower
    hila = np.array([[c_carina + caudal - 4.0, trachea.cv + posterior, -lateral],
                     [c_carina + caudal + 6.0, trachea.cv + posterior + 4.0, lateral + 5.0]])

    contrast = bool(rng.random() < CONTRAST_PROBABILITY)
    waves = np.column_stack([rng.normal(0.0, LUNG_WAVE_NUMBER, (3, 3)), U(0.0, 2 * np.pi, 3),
                             np.full(3, HU_LUNG_WAVE)])
    return _Anatomy(
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
def _body_factor(anat: _Anatomy, c: float) -> float:
    """Uniform scale of the body outline at depth c (it changes slowly along z)."""
    return 1.0 + BODY_WOBBLE * float(np.sin(c / 60.0 + anat.body_phase))


def _wall_profile(anat: _Anatomy, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Around the body (theta: 0 at the back, pi at the front): skin + fat thickness, skin to
    pleura thickness (skin, fat, muscle, rib layer, and the paraspinal bulge behind), and
    the extra wall of the upper chest (pectoral and shoulder-girdle muscles)."""
    fat_end = SKIN_MM + anat.fat * (1.0 + 0.3 * np.cos(2.0 * theta))     # fat thicker front and back
    muscle = anat.muscle * (0.55 + 0.45 * np.abs(np.cos(theta)))        # thin laterally
    wall = fat_end + muscle + 2.0 * anat.rib_half_thickness + 2.0
    wall = wall + np.maximum(anat.spine_wall - wall, 0.0) * np.exp(-(theta / 0.32) ** 2)
    upper = PECTORAL_MM * np.exp(-((theta - 0.75 * np.pi) / 0.45) ** 2) + SHOULDER_MM * np.sin(theta) ** 4
    return fat_end, wall, upper


def _upper_weight(anat: _Anatomy, c: float) -> float:
    """1 at the apex, 0 from mid-chest down."""
    return float(np.clip(1.0 - c / (0.5 * anat.lung_length), 0.0, 1.0))


@dataclass(frozen=True)
class _Plane:
    """The depth-independent 2-D fields of an axial grid u (nx,) x v (ny,) (anatomy mm).
    The body outline only scales uniformly with depth, so its shape is computed once."""
    u: np.ndarray
    v: np.ndarray
    rho: np.ndarray                     # distance from the body centre
    rho_over_r: np.ndarray              # rho / normalised super-ellipse radius: skin depth = f * this - rho
    theta: np.ndarray                   # angle from the posterior midline
    fat_end: np.ndarray
    wall: np.ndarray
    upper_wall: np.ndarray              # extra wall at the apex, see _wall_profile
    dome_rho: np.ndarray                # in-plane distance to the diaphragm's ridge
    dome_top: np.ndarray                # (nx,) depth of the diaphragm's ridge above each column
    apex_rho: np.ndarray                # in-plane distance to the apex of the lung on that side
    table: np.ndarray                   # bool
    rib_sector: np.ndarray              # bool: angles where ribs run (clear of the spine)
    parenchyma: np.ndarray              # (terms, ny * nx) in-plane factors of the lung HU
    midline: int                        # first column of the left half (u >= 0)


def _plane(anat: _Anatomy, u: np.ndarray, v: np.ndarray) -> _Plane:
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
    fat_end, wall, upper_wall = _wall_profile(anat, theta)
    top = anat.body_b * 1.05 + anat.table_gap - U * U / (2.0 * TABLE_CURVATURE_MM)
    table = (V >= top) & (V < top + TABLE_THICKNESS_MM) & (np.abs(U) < TABLE_HALF_WIDTH_MM)
    # The diaphragm is highest along a ridge across the body, slightly in front, from the top
    # of one cupola to the other (right higher, lower in the middle under the heart); it falls
    # away from the ridge, least to the front, most to the back (the deep posterior recesses).
    ridge = DOME_LATERAL * anat.body_a
    dome_u = np.abs(U) - np.clip(np.abs(U), 0.0, ridge)
    stretch = np.where(V < DOME_V_MM, *DOME_STRETCH)
    dome_rho = np.sqrt(dome_u ** 2 + (stretch * (V - DOME_V_MM)) ** 2)
    dip = np.cos(np.pi / 2.0 * np.clip(u / ridge, -1.0, 1.0)) ** 2             # smooth, flat at the cupola tops
    dome_top = np.interp(u, [-ridge, ridge], anat.c_dome) + DOME_CENTRAL_DIP_MM * dip
    apex_rho = np.sqrt((np.abs(U) - APEX_LATERAL * anat.body_a) ** 2 + (V - APEX_V * anat.body_b) ** 2)
    f32 = lambda x: np.asarray(x, dtype=np.float32)   # noqa: E731
    parenchyma = _parenchyma_basis(anat, U, V).reshape(-1, u.size * v.size)
    return _Plane(u, v, f32(rho), f32(rho / np.maximum(r, 1e-6)), f32(theta), f32(fat_end), f32(wall),
                  f32(upper_wall), f32(dome_rho), f32(dome_top), f32(apex_rho), table,
                  theta > RIB_MIN_ANGLE, parenchyma, int(np.searchsorted(u, 0.0)))


def _mediastinal_shapes(anat: _Anatomy, c: float) -> list[tuple[_Shape, float]]:
    """The mediastinal structures cut by the slice at depth c, with their HU, in paint order."""
    shapes: list[tuple[_Shape, float]] = []
    blood = anat.hu_blood
    if c < max(anat.c_dome) + MEDIASTINUM_BELOW_DOME_MM:           # keeps the lowest recesses apart
        fill = HU_MEDIASTINAL_FAT if c < anat.heart_c[1] else HU_SOFT_TISSUE
        shapes.append((_Capsule(0.0, -anat.body_b, 0.0, anat.vertebra.cv, anat.central_band), fill))
        shapes.append((anat.oesophagus, HU_OESOPHAGUS))
    tr = anat.trachea
    if c < anat.c_carina:
        shapes.append((replace(tr, a=tr.a + TRACHEA_WALL_MM, b=tr.b + TRACHEA_WALL_MM), HU_AIRWAY_WALL_SOLID))
    aa, da = anat.ascending_aorta, anat.descending_aorta
    c_arch = anat.c_carina - ARCH_ABOVE_CARINA_MM
    arch_r = 0.9 * aa.a
    if abs(c - c_arch) < arch_r:                                   # arch: a horizontal tube
        r = arch_r * np.sqrt(1.0 - ((c - c_arch) / arch_r) ** 2)
        shapes.append((_Capsule(aa.cu, aa.cv, da.cu, da.cv, max(r, 1.0)), blood))
    if c > c_arch:
        shapes.append((da, blood))
    if c_arch < c < anat.heart_c[0] + 15.0:
        shapes.append((aa, blood))
    if c < c_arch - arch_r + 5.0:                                  # supra-aortic vessels
        shapes += [(_Ellipse(u, tr.cv - tr.b - ahead, a, b), blood) for u, ahead, a, b in SUPRA_AORTIC_VESSELS]
    if c < anat.heart_c[0] + 10.0:
        shapes.append((anat.svc, blood))
    trunk = anat.pulmonary_trunk
    if anat.c_carina + 5.0 < c < anat.heart_c[0] + 10.0:
        shapes.append((trunk, blood))
    pa_r = PULMONARY_ARTERY_RADIUS_MM
    for hilum in anat.hila:                                        # pulmonary arteries to the hila
        if abs(c - hilum[0]) < pa_r:
            r = pa_r * np.sqrt(1.0 - ((c - hilum[0]) / pa_r) ** 2)
            shapes.append((_Capsule(trunk.cu, trunk.cv, hilum[2] * 0.9, hilum[1], max(r, 1.0)), blood))
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


def _grid_level(shape: _Shape, u: np.ndarray, v: np.ndarray, pad: float) -> tuple[slice, slice, np.ndarray] | None:
    """The shape's level on the part of the grid (sorted 1-D axes u, v) within pad mm of it."""
    u0, u1, v0, v1 = shape.bounds()
    iu = slice(int(np.searchsorted(u, u0 - pad)), int(np.searchsorted(u, u1 + pad)))
    iv = slice(int(np.searchsorted(v, v0 - pad)), int(np.searchsorted(v, v1 + pad)))
    if iu.stop <= iu.start or iv.stop <= iv.start:
        return None
    return iv, iu, shape.level(u[None, iu], v[iv, None]).astype(np.float32)


def _union_level(shapes: list[_Shape], u: np.ndarray, v: np.ndarray, pad: float) -> np.ndarray:
    """Minimum of the shapes' levels where within pad mm of one of them, +pad elsewhere."""
    out = np.full((v.size, u.size), pad, dtype=np.float32)
    if out.size <= SMALL_GRID:                                     # boxes would cost more than they save
        for shape in shapes:
            np.minimum(out, shape.level(u[None, :], v[:, None]), out=out)
        return out
    for shape in shapes:
        hit = _grid_level(shape, u, v, pad)
        if hit is not None:
            iv, iu, level = hit
            np.minimum(out[iv, iu], level, out=out[iv, iu])
    return out


def _dome_radius(anat: _Anatomy, below: np.ndarray) -> np.ndarray:
    """In-plane radius (around the ridge) of the diaphragm's section `below` mm under the
    ridge; negative above it, so that the lung level stays continuous."""
    return np.sign(below) * DOME_REFERENCE_MM * (np.abs(below) / anat.dome_drop) ** (1.0 / DOME_POWER)


@dataclass
class _Slice:
    """Fields of one axial slice at depth c."""
    plane: _Plane
    c: float
    depth: np.ndarray                   # below the skin, mm (< 0 outside the body)
    wall: np.ndarray                    # skin to pleura, mm
    shapes: list[tuple[_Shape, float]]
    mediastinum: np.ndarray             # union level of mediastinal structures and vertebral body
    level: np.ndarray                   # lung level (mm, < 0 inside) of the lung on each half
    lungs: np.ndarray                   # uint8 RIGHT_LUNG / LEFT_LUNG / 0


def _slice_fields(anat: _Anatomy, plane: _Plane, c: float) -> _Slice:
    """Body depth, wall and lungs of the slice at depth c."""
    depth = _body_factor(anat, c) * plane.rho_over_r - plane.rho
    wall = plane.wall + _upper_weight(anat, c) * plane.upper_wall
    shapes = _mediastinal_shapes(anat, c)
    pad = PLEURAL_GAP_MM + MEDIASTINUM_FAT_MM
    mediastinum = _union_level([s for s, _ in shapes] + [anat.vertebra], plane.u, plane.v, pad)
    # Lung = inside the cavity, clear of the mediastinum, above the dome, below the apex cap.
    base = np.maximum(wall - depth, PLEURAL_GAP_MM - mediastinum)
    apex_r = float(APEX_RADIUS * anat.body_a * np.sign(c) * np.sqrt(abs(c) / anat.apex_cap))
    level = np.empty(base.shape, dtype=np.float32)
    lungs = np.zeros(base.shape, dtype=np.uint8)
    halves = (slice(0, plane.midline), slice(plane.midline, None))       # right lung at u < 0
    for cols, label in zip(halves, (RIGHT_LUNG, LEFT_LUNG)):
        below = c - plane.dome_top[cols]
        dome_r = _dome_radius(anat, below)
        half = level[:, cols]
        np.maximum(base[:, cols], dome_r[None, :] - plane.dome_rho[:, cols], out=half)
        np.maximum(half, plane.apex_rho[:, cols] - apex_r, out=half)
        lungs[:, cols][half < 0] = label
    return _Slice(plane, c, depth, wall, shapes, mediastinum, level, lungs)


# ----------------------------------------------------------------------------- painting one slice
def _paint_body(s: _Slice, hu: np.ndarray) -> None:
    """Air, table, skin, subcutaneous fat, muscle; the cavity starts as soft tissue."""
    hu[s.plane.table] = HU_TABLE
    hu[s.depth >= 0] = HU_SKIN
    hu[(s.depth >= SKIN_MM) & (s.depth < s.plane.fat_end)] = HU_FAT
    hu[s.depth >= s.plane.fat_end] = HU_MUSCLE
    hu[s.depth >= s.wall] = HU_SOFT_TISSUE


def _paint_mediastinum(anat: _Anatomy, s: _Slice, hu: np.ndarray) -> None:
    """Fat around the structures (above the diaphragm), then each structure (inside the
    cavity only)."""
    cavity = s.depth >= s.wall
    if s.c < anat.heart_c[1]:
        hu[cavity & (s.mediastinum < PLEURAL_GAP_MM + MEDIASTINUM_FAT_MM)] = HU_MEDIASTINAL_FAT
    for shape, value in s.shapes:
        hit = _grid_level(shape, s.plane.u, s.plane.v, 0.0)
        if hit is not None:
            iv, iu, level = hit
            hu[iv, iu][(level < 0) & cavity[iv, iu]] = value


def _paint_bone(hu: np.ndarray, hit: tuple[slice, slice, np.ndarray] | None, cortex_hu: float,
                inner_hu: float) -> None:
    """A bone from its _grid_level: cortex CORTEX_MM thick, inner_hu inside."""
    if hit is None:
        return
    iv, iu, level = hit
    region = hu[iv, iu]
    region[level < 0] = inner_hu
    region[(level < 0) & (level > -CORTEX_MM)] = cortex_hu


def _paint_spine(anat: _Anatomy, s: _Slice, hu: np.ndarray) -> None:
    """Vertebral body (or disc), canal and, over most of each level, the posterior arch."""
    phase = (s.c - anat.vertebra_phase) % anat.vertebra_period
    if phase < anat.disc:
        hit = _grid_level(anat.vertebra, s.plane.u, s.plane.v, 0.0)
        if hit is not None:
            hu[hit[0], hit[1]][hit[2] < 0] = HU_DISC
    else:
        _paint_bone(hu, _grid_level(anat.vertebra, s.plane.u, s.plane.v, 0.0), anat.hu_cortex, HU_VERTEBRA)
    cn, vb = anat.canal, anat.vertebra
    if anat.disc < phase < anat.disc + ARCH_FRACTION * anat.vertebra_period:
        back = cn.cv + cn.b + LAMINA_RADIUS_MM
        spinous_length, spinous_r = SPINOUS_PROCESS_MM
        transverse_length, transverse_r = TRANSVERSE_PROCESS_MM
        parts = [_Capsule(0.0, back, 0.0, back + spinous_length, spinous_r)]
        for side in (-1.0, 1.0):
            parts += [_Capsule(side * (cn.a + 2.0), cn.cv - 3.0, side * (cn.a - 2.0), back, LAMINA_RADIUS_MM),
                      _Capsule(side * 0.6 * vb.a, vb.cv + 0.6 * vb.b, side * (cn.a + 2.0), cn.cv - 2.0,
                               PEDICLE_RADIUS_MM),
                      _Capsule(side * (cn.a + 3.0), cn.cv - 1.0, side * (cn.a + 3.0 + transverse_length),
                               cn.cv - 6.0, transverse_r)]
        for part in parts:
            _paint_bone(hu, _grid_level(part, s.plane.u, s.plane.v, 0.0), anat.hu_cortex, anat.hu_marrow)
    hit = _grid_level(cn, s.plane.u, s.plane.v, 0.0)
    if hit is not None:
        hu[hit[0], hit[1]][hit[2] < 0] = HU_CANAL


def _paint_ribs(anat: _Anatomy, s: _Slice, hu: np.ndarray) -> None:
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


def _paint_sternum(anat: _Anatomy, s: _Slice, hu: np.ndarray) -> None:
    """Flat bone in the anterior wall from the manubrium (wider) down to the xiphoid."""
    top, bottom = anat.c_carina - STERNUM_TOP_ABOVE_CARINA_MM, anat.heart_c[1]
    if not top < s.c < bottom:
        return
    b = anat.body_b * _body_factor(anat, s.c)
    _, wall, upper = _wall_profile(anat, np.array(np.pi))
    wall_front = float(wall + _upper_weight(anat, s.c) * upper)
    height, widening = MANUBRIUM_MM
    width = anat.sternum_half_width * (1.0 + widening * np.clip(1.0 - (s.c - top) / height, 0.0, 1.0))
    sternum = _Ellipse(0.0, -b + wall_front - 1.0 - STERNUM_HALF_THICKNESS_MM, width, STERNUM_HALF_THICKNESS_MM)
    _paint_bone(hu, _grid_level(sternum, s.plane.u, s.plane.v, 0.0), anat.hu_cortex, anat.hu_marrow)


def _parenchyma_basis(anat: _Anatomy, u, v) -> np.ndarray:
    """Lung HU is a base value, a gravity gradient toward the back and a few slow waves
    amp * cos(ku u + kv v + kc c + phase). Split as cos(a + b) = cos a cos b - sin a sin b,
    it is the sum over terms of these in-plane factors (terms, *shape) times the depth
    factors of _parenchyma_weights, so a whole slice is one small weighted sum."""
    g = np.clip((v + anat.body_b) / (2.0 * anat.body_b), 0.0, 1.0)
    terms = [anat.hu_lung + anat.hu_gravity * g * g]
    for ku, kv, _, _, amp in anat.lung_waves.tolist():
        a = ku * u + kv * v
        terms += [amp * np.cos(a), amp * np.sin(a)]
    return np.stack(np.broadcast_arrays(*terms)).astype(np.float32)


def _parenchyma_weights(anat: _Anatomy, c) -> np.ndarray:
    """Depth factors (terms, *shape of c) matching _parenchyma_basis."""
    c = np.asarray(c, dtype=np.float64)
    weights = [np.ones_like(c)]
    for _, _, kc, phase, _ in anat.lung_waves.tolist():
        weights += [np.cos(kc * c + phase), -np.sin(kc * c + phase)]
    return np.stack(weights).astype(np.float32)


def _parenchyma_hu(anat: _Anatomy, u, v, c) -> np.ndarray:
    """Lung HU at points (u, v, c broadcast together)."""
    return np.sum(_parenchyma_basis(anat, u, v) * _parenchyma_weights(anat, c), axis=0)


def _paint_slice(anat: _Anatomy, s: _Slice, hu: np.ndarray) -> None:
    """HU of one slice into hu, outside in: air, body, mediastinum, bones, then the lungs."""
    hu.fill(HU_AIR)
    _paint_body(s, hu)
    _paint_mediastinum(anat, s, hu)
    _paint_spine(anat, s, hu)
    _paint_ribs(anat, s, hu)
    _paint_sternum(anat, s, hu)
    # einsum, not matmul: no BLAS threads (slow when the cores are busy)
    parenchyma = np.einsum("k,kn->n", _parenchyma_weights(anat, s.c), s.plane.parenchyma).reshape(hu.shape)
    np.copyto(hu, parenchyma, where=s.lungs > 0)


def _paint_volume(anat: _Anatomy, frame: _Frame) -> tuple[np.ndarray, np.ndarray]:
    """Float32 HU and lung labels of every slice (no vessels, airways or nodules yet)."""
    grid = frame.grid
    plane = _plane(anat, frame.u_of_x(grid.axis_mm(2)), frame.v_of_y(grid.axis_mm(1)))
    hu = np.empty(grid.shape, dtype=np.float32)
    labels = np.empty(grid.shape, dtype=np.uint8)
    for z, z_mm in enumerate(grid.axis_mm(0)):
        s = _slice_fields(anat, plane, float(frame.c_of_z(z_mm)))
        _paint_slice(anat, s, hu[z])
        labels[z] = s.lungs
    return hu, labels


# ----------------------------------------------------------------------------- fitting to the nodules
def _nodule_mm(nodule: NoduleSpec, grid: _Grid) -> np.ndarray:
    return np.asarray(nodule.center_zyx, dtype=np.float64) * grid.spacing


def _side_label(frame: _Frame, centre_mm: np.ndarray) -> int:
    return RIGHT_LUNG if frame.u_of_x(centre_mm[2]) < 0 else LEFT_LUNG


_FIT_POINTS = ((-1.0, ((2, 2),)),                                   # (c offset / reach, grid points)
               (0.0, ((0, 2), (4, 2), (2, 0), (2, 4), (2, 2), (1, 1), (1, 3), (3, 1), (3, 3))),
               (1.0, ((2, 2),)))


def _fit_planes(anat: _Anatomy, frame: _Frame, nodules: list[NoduleSpec]) -> list[_Plane]:
    """Per nodule, a 5 x 5 grid through its centre out to its clearance ball (the test points
    of _fit_cost are on it). Depends on the in-plane placement only."""
    planes = []
    for nod in nodules:
        centre = _nodule_mm(nod, frame.grid)
        axis = np.array([-1.0, -0.7, 0.0, 0.7, 1.0]) * (nod.radius_mm + NODULE_CLEARANCE_MM) / frame.scale
        planes.append(_plane(anat, frame.u_of_x(centre[2]) + axis, frame.v_of_y(centre[1]) + axis))
    return planes


def _fit_cost(anat: _Anatomy, frame: _Frame, nodules: list[NoduleSpec], planes: list[_Plane]) -> float:
    """How far (mm, summed) the test points of the nodules' clearance balls (centre, six
    axis points and four in-plane diagonals) lie outside the lung on the nodule's side,
    FIT_MARGIN_MM included; 0 when they all fit."""
    cost = 0.0
    for nod, plane in zip(nodules, planes):
        centre = _nodule_mm(nod, frame.grid)
        reach = nod.radius_mm + NODULE_CLEARANCE_MM
        right = plane.u[2] < 0
        for dc, points in _FIT_POINTS:
            level = _slice_fields(anat, plane, float(frame.c_of_z(centre[0])) + dc * reach).level
            for iv, iu in points:
                if (plane.u[iu] < 0) == right:
                    cost += max(float(level[iv, iu]) + FIT_MARGIN_MM, 0.0)
                else:                                                       # across the midline
                    cost += abs(float(plane.u[iu])) + FIT_MARGIN_MM
    return cost


def _fit_frame(anat: _Anatomy, grid: _Grid, nodules: list[NoduleSpec], rng: np.random.Generator) -> _Frame:
    """Place the chest on the grid: a random z position and body centre, then a coordinate
    descent on z position, body centre and scale until every nodule's clearance ball lies
    in its lung (or the evaluation budget is spent; the ball union then does the rest)."""
    span = (grid.shape[0] - 1) * grid.spacing[0]
    # Top slice at most MAX_ABOVE_APEX_MM above the apex; a long volume reaches into the abdomen.
    bounds = {"c_top": (-MAX_ABOVE_APEX_MM, max(0.0, anat.lung_length - span) + 20.0),
              "centre_x": FIT_CENTRE_X_MM, "centre_y": FIT_CENTRE_Y_MM, "scale": FIT_SCALE}
    frame = _Frame(grid, 1.0, rng.uniform(-6.0, 6.0), rng.uniform(-10.0, 20.0), rng.uniform(*bounds["c_top"]))
    if not nodules:
        return frame
    planes: dict[tuple[float, float, float], list[_Plane]] = {}

    def cost_of(f: _Frame) -> float:
        key = (f.scale, f.centre_x, f.centre_y)
        if key not in planes:
            planes[key] = _fit_planes(anat, f, nodules)
        return _fit_cost(anat, f, nodules, planes[key])

    steps = {"c_top": 16.0, "centre_x": 8.0, "centre_y": 8.0, "scale": 0.08}
    cost = cost_of(frame)
    evaluations = 0
    while cost > 0 and evaluations < FIT_MAX_EVALUATIONS and steps["c_top"] >= 1.0:
        improved = False
        for name, step in steps.items():
            for sign in (1.0, -1.0):
                lo, hi = bounds[name]
                trial = replace(frame, **{name: float(np.clip(getattr(frame, name) + sign * step, lo, hi))})
                trial_cost = cost_of(trial)
                evaluations += 1
                if trial_cost < cost:
                    frame, cost, improved = trial, trial_cost, True
                    break
        if not improved:
            steps = {name: step / 2.0 for name, step in steps.items()}
    return frame


def _ball_box(centre_mm: np.ndarray, radius_mm: float, grid: _Grid) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Voxel box around a ball and the squared distance (mm^2) of its voxels to the centre."""
    lo = np.maximum(np.floor((centre_mm - radius_mm) / grid.spacing).astype(int), 0)
    hi = np.minimum(np.ceil((centre_mm + radius_mm) / grid.spacing).astype(int) + 1, grid.shape)
    if np.any(hi <= lo):
        return None
    axes = [np.arange(lo[i], hi[i]) * grid.spacing[i] - centre_mm[i] for i in range(3)]
    d2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    return tuple(slice(lo[i], hi[i]) for i in range(3)), d2


def _add_nodule_balls(anat: _Anatomy, frame: _Frame, nodules: list[NoduleSpec],
                      hu: np.ndarray, labels: np.ndarray) -> None:
    """Union each nodule's clearance ball into its lung, closed so the join looks pleural.
    A ball the lung does not reach is first joined to the nearest lung by a neck, so the
    lung grows a lobe around it instead of an island in the mediastinum or the wall."""
    grid = frame.grid
    radius_vox = CLOSING_MM / grid.spacing
    half = np.ceil(radius_vox).astype(int)
    zz, yy, xx = np.ogrid[-half[0]:half[0] + 1, -half[1]:half[1] + 1, -half[2]:half[2] + 1]
    closing = (zz / radius_vox[0]) ** 2 + (yy / radius_vox[1]) ** 2 + (xx / radius_vox[2]) ** 2 <= 1.0
    for nod in nodules:
        centre = _nodule_mm(nod, grid)
        reach = nod.radius_mm + NODULE_CLEARANCE_MM
        label = _side_label(frame, centre)
        box = _ball_box(centre, reach, grid)
        if box is None or (labels[box[0]][box[1] <= reach * reach] == label).all():
            continue                                                   # the usual case: it already fits
        sl, d2 = _ball_box(centre, reach + NECK_SEARCH_MM, grid)
        lung = labels[sl] == label
        wanted = d2 <= reach * reach
        lung_voxels = np.argwhere(lung)
        if len(lung_voxels):
            offset = centre - np.array([s.start for s in sl]) * grid.spacing
            gap = lung_voxels * grid.spacing - offset
            nearest = gap[np.argmin(np.einsum("ij,ij->i", gap, gap))]
            wanted |= _segment_distance2(sl, grid, centre, centre + nearest) <= (NECK_FRACTION * reach) ** 2
        # Close only around what is added (and the closing's reach): the search box is large.
        near = tuple(slice(max(int(i.min()) - 2 * h, 0), int(i.max()) + 2 * h + 1)
                     for i, h in zip(np.nonzero(wanted & ~lung), half))
        added = np.zeros_like(lung)
        added[near] = ndimage.binary_closing(lung[near] | wanted[near], structure=closing) & ~lung[near]
        labels[sl][added] = label
        idx = np.nonzero(added)
        zyx = np.stack([(idx[i] + sl[i].start) * grid.spacing[i] for i in range(3)], axis=-1)
        cvu = frame.to_anatomy(zyx)
        hu[sl][added] = _parenchyma_hu(anat, cvu[:, 2], cvu[:, 1], cvu[:, 0])


def _segment_distance2(box: tuple[slice, ...], grid: _Grid, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distance (mm^2) of the box's voxels to the segment a-b (volume mm)."""
    w = [np.arange(box[k].start, box[k].stop) * grid.spacing[k] - a[k] for k in range(3)]
    wz, wy, wx = w[0][:, None, None], w[1][None, :, None], w[2][None, None, :]
    e = b - a
    t = np.clip((wz * e[0] + wy * e[1] + wx * e[2]) / max(float(e @ e), 1e-9), 0.0, 1.0)
    return (wz - t * e[0]) ** 2 + (wy - t * e[1]) ** 2 + (wx - t * e[2]) ** 2


def _enforce_nodule_labels(frame: _Frame, nodules: list[NoduleSpec], labels: np.ndarray) -> None:
    for nod in nodules:
        centre = _nodule_mm(nod, frame.grid)
        reach = nod.radius_mm + NODULE_CLEARANCE_MM
        box = _ball_box(centre, reach, frame.grid)
        if box is not None:
            labels[box[0]][box[1] <= reach * reach] = _side_label(frame, centre)


# ----------------------------------------------------------------------------- vessel and airway trees
@dataclass
class _Tubes:
    """Tapered tube segments in volume mm: p0, p1 (n, 3) (z, y, x), radii r0, r1 (n,)."""
    p0: np.ndarray
    p1: np.ndarray
    r0: np.ndarray
    r1: np.ndarray

    @staticmethod
    def empty() -> "_Tubes":
        return _Tubes(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0))

    @staticmethod
    def concat(parts: list["_Tubes"]) -> "_Tubes":
        return _Tubes(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("p0", "p1", "r0", "r1")))


@dataclass(frozen=True)
class _LungMap:
    """Coarse lung labels over the whole lung height (also beyond the volume), so trees
    grow the same whatever part of the chest the volume shows."""
    labels: np.ndarray
    origin: np.ndarray                  # volume mm of labels[0, 0, 0]
    step: float

    def lookup(self, p_mm: np.ndarray) -> np.ndarray:
        idx = np.rint((p_mm - self.origin) / self.step).astype(np.intp)
        ok = np.all((idx >= 0) & (idx < np.asarray(self.labels.shape)), axis=-1)
        out = np.zeros(p_mm.shape[:-1], dtype=np.uint8)
        out[ok] = self.labels[tuple(idx[ok].T)]
        return out


def _lung_map(anat: _Anatomy, frame: _Frame) -> _LungMap:
    """Lung labels on a GROWTH_GRID_MM grid from the apex to the deepest recess."""
    step = GROWTH_GRID_MM
    c_end = max(anat.c_dome) + anat.dome_drop * (anat.body_a / DOME_REFERENCE_MM) ** DOME_POWER
    reach = 1.3 * anat.body_a * frame.scale
    ctr = frame.to_mm(np.zeros(3))
    origin = np.array([frame.to_mm(np.array([c_end, 0.0, 0.0]))[0], ctr[1] - reach, ctr[2] - reach])
    n_z = int(np.ceil((c_end + 5.0) / step)) + 1
    n_xy = int(np.ceil(2 * reach / step)) + 1
    labels = np.zeros((n_z, n_xy, n_xy), dtype=np.uint8)
    plane = _plane(anat, frame.u_of_x(origin[2] + np.arange(n_xy) * step), frame.v_of_y(origin[1] + np.arange(n_xy) * step))
    for k in range(n_z):
        labels[k] = _slice_fields(anat, plane, float(frame.c_of_z(origin[0] + k * step))).lungs
    return _LungMap(labels, origin, step)


def _normalise(d: np.ndarray) -> np.ndarray:
    return d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-9)


def _grow_tree(p: np.ndarray, d: np.ndarray, r: np.ndarray, label: np.ndarray, lung: _LungMap,
               rng: np.random.Generator, r_min: float,
               segment_mm: tuple[tuple[float, float], float]) -> tuple[_Tubes, np.ndarray]:
    """Random 3-D branching, one generation at a time (vectorised, deterministic in rng).

    Each tip grows a segment of length ~ radius (segment_mm), bent at random and pushed
    away from its root, kept if its end and middle lie in its own lung (TREE_TRIES).
    p, d, r, label: the roots' points (volume mm), unit directions, radii and lung labels. Then it forks in two: radii by Murray's law r^3 = r1^3 + r2^3 with a random
    asymmetry, angles from Murray's optimum, the children in a plane at a random roll. A tip
    that found no room (the pleura) still forks once, in a random direction, so vessels thin
    out before the lung edge instead of ending there at full calibre.
    Returns the segments and, per segment, whether it starts at a fork.
    """
    root = p - TREE_ROOT_BACKOFF_MM * _normalise(d)  # the outward push points away from here
    (length_lo, length_hi), length_extra = segment_mm
    parts, forks = [], []
    at_fork = np.zeros(len(p), dtype=bool)
    stalled = np.zeros(len(p), dtype=bool)
    while len(p):
        length = r * rng.uniform(length_lo, length_hi, len(r)) + length_extra
        outward = _normalise(p - root)
        keep = np.zeros(len(p), dtype=bool)
        end = p.copy()
        direction = _normalise(rng.normal(0.0, 1.0, d.shape))          # for tips that find no room
        for spread, shorten in TREE_TRIES:
            trial = _normalise(d + TREE_OUTWARD_PUSH * outward + rng.normal(0.0, spread, d.shape))
            trial_end = p + shorten * length[:, None] * trial
            ok = ~keep & (lung.lookup(trial_end) == label) & (lung.lookup((p + trial_end) / 2.0) == label)
            end[ok], direction[ok], keep = trial_end[ok], trial[ok], keep | ok
        r_end = r * TAPER
        parts.append(_Tubes(p[keep], end[keep], r[keep], r_end[keep]))
        forks.append(at_fork[keep])
        alive = keep | ~stalled
        p, d, r_end, root, label, stalled = end[alive], direction[alive], r_end[alive], root[alive], label[alive], ~keep[alive]
        ratio = rng.uniform(*TREE_BRANCH_RATIO, len(p))
        r1 = r_end / np.cbrt(1.0 + ratio ** 3)
        r2 = ratio * r1
        r0sq, r1sq, r2sq = r_end ** 2, r1 ** 2, r2 ** 2
        cos1 = np.clip((r0sq ** 2 + r1sq ** 2 - r2sq ** 2) / (2 * r0sq * r1sq), -1.0, 1.0)
        cos2 = np.clip((r0sq ** 2 + r2sq ** 2 - r1sq ** 2) / (2 * r0sq * r2sq), -1.0, 1.0)
        a1 = np.arccos(cos1) + rng.normal(0.0, TREE_ANGLE_JITTER, len(p))
        a2 = np.arccos(cos2) + rng.normal(0.0, TREE_ANGLE_JITTER, len(p))
        roll = rng.normal(0.0, 1.0, d.shape)
        perp = _normalise(roll - np.sum(roll * d, axis=1, keepdims=True) * d)
        d1 = np.cos(a1)[:, None] * d + np.sin(a1)[:, None] * perp
        d2 = np.cos(a2)[:, None] * d - np.sin(a2)[:, None] * perp
        p, d, r = np.concatenate([p, p]), np.concatenate([d1, d2]), np.concatenate([r1, r2])
        root, label = np.concatenate([root, root]), np.concatenate([label, label])
        stalled = np.concatenate([stalled, stalled])
        big = r >= r_min
        p, d, r, root, label, stalled = p[big], d[big], r[big], root[big], label[big], stalled[big]
        at_fork = np.ones(len(p), dtype=bool)
    return _Tubes.concat(parts), np.concatenate(forks)


def _into_lung(lung: _LungMap, start: np.ndarray, direction: np.ndarray, label: int) -> np.ndarray | None:
    """A point just inside the lung along direction from start (None if none in reach)."""
    reach, step, deeper = LUNG_SEARCH_MM
    unit = _normalise(direction)
    steps = start + np.arange(0.0, reach, step)[:, None] * unit
    inside = np.nonzero(lung.lookup(steps) == label)[0]
    return steps[inside[0]] + deeper * unit if inside.size else None


def _hilum_mm(anat: _Anatomy, frame: _Frame, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Hilum point (volume mm) and the lateral unit vector of one side (0 right, 1 left)."""
    lateral = np.array([0.0, 0.0, -1.0 if side == 0 else 1.0])
    return frame.to_mm(anat.hila[side]), lateral


def _grow_vessels(anat: _Anatomy, frame: _Frame, lung: _LungMap, rng: np.random.Generator) -> tuple[_Tubes, np.ndarray]:
    """Per lung: a segmental artery toward each bronchopulmonary segment from the hilum, and
    the veins of the upper and lower segments from two points below and in front of it."""
    roots_p, roots_d, labels = [], [], []
    for side, label in ((0, RIGHT_LUNG), (1, LEFT_LUNG)):
        hilum, lateral = _hilum_mm(anat, frame, side)
        to_volume = np.array([1.0, 1.0, lateral[2]])                     # (up, posterior, lateral) -> (z, y, x)
        upper = [d for d in SEGMENT_DIRECTIONS if d[0] > 0]
        lower = [d for d in SEGMENT_DIRECTIONS if d[0] <= 0]
        for origin, directions in ((hilum, SEGMENT_DIRECTIONS),
                                   (hilum + np.array(SUPERIOR_VEIN_OFFSET_MM), upper),
                                   (hilum + np.array(INFERIOR_VEIN_OFFSET_MM), lower)):
            for direction in directions:
                dvec = _normalise(np.array(direction) * to_volume + rng.normal(0.0, ROOT_JITTER, 3))
                start = _into_lung(lung, origin, dvec + 0.7 * lateral, label)     # mostly sideways from the hilum
                if start is not None:
                    roots_p.append(start)
                    roots_d.append(dvec)
                    labels.append(label)
    if not roots_p:
        return _Tubes.empty(), np.zeros(0, dtype=bool)
    radius = rng.uniform(*VESSEL_ROOT_RADIUS_MM, len(roots_p))
    return _grow_tree(np.array(roots_p), np.array(roots_d), radius, np.array(labels, dtype=np.uint8), lung,
                      rng, VESSEL_MIN_RADIUS_MM, VESSEL_SEGMENT_MM)


def _grow_airways(anat: _Anatomy, frame: _Frame, lung: _LungMap, rng: np.random.Generator) -> tuple[_Tubes, _Tubes]:
    """Trachea and main bronchi (labelled as airways), and the lobar bronchi with their
    trees inside the lungs."""
    tr = anat.trachea
    carina = frame.to_mm(np.array([anat.c_carina, tr.cv, tr.cu]))
    above = frame.to_mm(np.array([-2.0 * anat.apex_cap, tr.cv, tr.cu]))   # up into the neck, vertical as in 2-D
    main_r = rng.uniform(*MAIN_BRONCHUS_RADIUS_MM, 2)
    main = [_Tubes(np.array([above]), np.array([carina]), np.array([tr.a * frame.scale]),
                   np.array([tr.a * frame.scale]))]
    lobar, roots_p, roots_d, labels = [], [], [], []
    for side, label in ((0, RIGHT_LUNG), (1, LEFT_LUNG)):
        hilum, lateral = _hilum_mm(anat, frame, side)
        hilum = hilum + np.array([2.0, 4.0, 0.0])                         # bronchus above / behind the artery
        main.append(_Tubes(carina[None], hilum[None], main_r[side:side + 1], 0.85 * main_r[side:side + 1]))
        for direction in LOBAR_BRONCHUS_DIRECTIONS:
            dvec = _normalise(np.array(direction) * np.array([1.0, 1.0, lateral[2]]))
            start = _into_lung(lung, hilum, lateral + 0.5 * dvec, label)
            if start is not None:
                r = 0.75 * main_r[side]
                lobar.append(_Tubes(hilum[None], start[None], np.array([r]), np.array([0.9 * r])))
                roots_p.append(start)
                roots_d.append(dvec)
                labels.append(label)
    if not roots_p:
        return _Tubes.concat(main), _Tubes.empty()
    radius = rng.uniform(*AIRWAY_ROOT_RADIUS_MM, len(roots_p))
    tree, _ = _grow_tree(np.array(roots_p), np.array(roots_d), radius, np.array(labels, dtype=np.uint8),
                         lung, rng, AIRWAY_MIN_RADIUS_MM, AIRWAY_SEGMENT_MM)
    return _Tubes.concat(main), _Tubes.concat(lobar + [tree])


def _tube_boxes(tubes: _Tubes, grid: _Grid, extra_mm: np.ndarray | float = 0.0
                ) -> Iterator[tuple[tuple[slice, slice, slice], np.ndarray]]:
    """Per tube (radius + extra_mm): its voxel box and its occupancy there, a linear ramp
    one pixel wide across the surface (partial volume)."""
    r0, r1 = tubes.r0 + extra_mm, tubes.r1 + extra_mm
    soft = float(np.mean(grid.spacing[1:]))
    reach = np.maximum(r0, r1)[:, None] + soft
    lo = np.maximum(np.floor((np.minimum(tubes.p0, tubes.p1) - reach) / grid.spacing).astype(int), 0)
    hi = np.minimum(np.ceil((np.maximum(tubes.p0, tubes.p1) + reach) / grid.spacing).astype(int) + 1, grid.shape)
    axes = [grid.axis_mm(k).astype(np.float32) for k in range(3)]
    for i in np.nonzero(np.all(hi > lo, axis=1))[0]:
        box = (slice(lo[i, 0], hi[i, 0]), slice(lo[i, 1], hi[i, 1]), slice(lo[i, 2], hi[i, 2]))
        e = tubes.p1[i] - tubes.p0[i]
        ee = max(float(e @ e), 1e-9)
        w = [axes[k][box[k]] - np.float32(tubes.p0[i, k]) for k in range(3)]      # voxel - p0, per axis
        shape = [(-1, 1, 1), (1, -1, 1), (1, 1, -1)]
        # q: position along the axis in units of its length; d^2 = |w|^2 + ee * t * (t - 2 q), t = clip(q).
        q = sum((w[k] * np.float32(e[k] / ee)).reshape(shape[k]) for k in range(3))
        w2 = sum((w[k] * w[k]).reshape(shape[k]) for k in range(3))
        t = np.clip(q, 0.0, 1.0)
        q *= -2.0
        q += t
        q *= t
        q *= np.float32(ee)
        q += w2
        np.maximum(q, 0.0, out=q)
        dist = np.sqrt(q, out=q)
        # occupancy = clip((radius(t) - dist) / soft + 0.5, 0, 1)
        t *= np.float32((r1[i] - r0[i]) / soft)
        t += np.float32(r0[i] / soft + 0.5)
        dist *= np.float32(1.0 / soft)
        t -= dist
        yield box, np.clip(t, 0.0, 1.0, out=t)


@dataclass(frozen=True)
class _Cores:
    """The balls of radius_mm around the nodule centres: voxel boxes (n, 3) lo / hi, and masks."""
    lo: np.ndarray
    hi: np.ndarray
    balls: list[np.ndarray]
    extent: tuple[list[int], list[int]]  # voxel box around all of them (lo, hi)

    @staticmethod
    def of(nodules: list[NoduleSpec], grid: _Grid) -> "_Cores":
        boxes = [(b[0], b[1] <= nod.radius_mm ** 2) for nod in nodules
                 if (b := _ball_box(_nodule_mm(nod, grid), nod.radius_mm, grid)) is not None]
        lo = np.array([[sl.start for sl in box] for box, _ in boxes], dtype=int).reshape(-1, 3)
        hi = np.array([[sl.stop for sl in box] for box, _ in boxes], dtype=int).reshape(-1, 3)
        extent = (lo.min(axis=0).tolist(), hi.max(axis=0).tolist()) if boxes else ([], [])
        return _Cores(lo, hi, [ball for _, ball in boxes], extent)

    def clear(self, box: tuple[slice, ...], occ: np.ndarray) -> None:
        """No tube inside a nodule's core (touching the nodule is fine)."""
        if not self.balls or any(sl.start >= hi or sl.stop <= lo for sl, lo, hi in zip(box, *self.extent)):
            return                                                     # far from every nodule
        box_lo = np.array([sl.start for sl in box])
        box_hi = np.array([sl.stop for sl in box])
        lo, hi = np.maximum(self.lo, box_lo), np.minimum(self.hi, box_hi)
        for k in np.nonzero(np.all(hi > lo, axis=1))[0]:
            inside = self.balls[k][tuple(slice(a, b) for a, b in zip(lo[k] - self.lo[k], hi[k] - self.lo[k]))]
            occ[tuple(slice(a, b) for a, b in zip(lo[k] - box_lo, hi[k] - box_lo))][inside] = 0.0


def _paint_trees(anat: _Anatomy, grid: _Grid, nodules: list[NoduleSpec], vessels: _Tubes,
                 airways: tuple[_Tubes, _Tubes], hu: np.ndarray, labels: np.ndarray) -> None:
    """Blend each tube straight into hu (overlaps compose like a union): vessels clipped to
    the lungs, then all airway walls, then all lumens (so a wall never crosses a lumen);
    trachea and main bronchi lumens become label AIRWAY."""
    cores = _Cores.of(nodules, grid)
    lung_mask = labels > 0
    for box, occ in _tube_boxes(vessels, grid):
        occ *= lung_mask[box]
        cores.clear(box, occ)
        region = hu[box]
        region += (anat.hu_vessel - region) * occ
    main, tree = airways
    wall_fraction, wall_min = AIRWAY_WALL
    passes = [(main, TRACHEA_WALL_MM, HU_AIRWAY_WALL), (tree, np.maximum(wall_min, wall_fraction * tree.r0), HU_AIRWAY_WALL),
              (main, 0.0, HU_AIRWAY_LUMEN), (tree, 0.0, HU_AIRWAY_LUMEN)]
    for tubes, extra, value in passes:
        for box, occ in _tube_boxes(tubes, grid, extra):
            cores.clear(box, occ)
            region = hu[box]
            region += (value - region) * occ
            if tubes is main and value == HU_AIRWAY_LUMEN:
                labels[box][occ >= 0.5] = AIRWAY


def _vessel_candidates(vessels: _Tubes, forks: np.ndarray, labels: np.ndarray, nodules: list[NoduleSpec],
                       grid: _Grid, rng: np.random.Generator) -> np.ndarray:
    """Nodule-sized vessel spots: midpoints of mostly cranio-caudal segments (round on an
    axial slice) and forks, inside a lung and well away from every nodule."""
    radius = (vessels.r0 + vessels.r1) / 2.0
    along = vessels.p1 - vessels.p0
    cranio = np.abs(along[:, 0]) > CANDIDATE_MIN_COSINE * np.linalg.norm(along, axis=1)
    sized = (radius >= CANDIDATE_RADIUS_MM[0]) & (radius <= CANDIDATE_RADIUS_MM[1])
    points = np.concatenate([((vessels.p0 + vessels.p1) / 2.0)[sized & cranio], vessels.p0[sized & forks]])
    vox = points / grid.spacing
    idx = np.rint(vox).astype(np.intp)
    inside = np.all((idx >= 0) & (idx < np.asarray(grid.shape)), axis=1)
    points, vox, idx = points[inside], vox[inside], idx[inside]
    in_lung = np.isin(labels[tuple(idx.T)], (RIGHT_LUNG, LEFT_LUNG))
    points, vox = points[in_lung], vox[in_lung]
    for nod in nodules:
        keep_out = max(2.0 * nod.radius_mm, nod.radius_mm + CANDIDATE_CLEARANCE_MM)
        far = np.linalg.norm(points - _nodule_mm(nod, grid), axis=1) >= keep_out
        points, vox = points[far], vox[far]
    wanted = int(rng.integers(*CANDIDATE_COUNT, endpoint=True))
    chosen: list[int] = []
    for i in rng.permutation(len(points)):
        if all(np.linalg.norm(points[i] - points[j]) >= CANDIDATE_SEPARATION_MM for j in chosen):
            chosen.append(int(i))
            if len(chosen) == wanted:
                break
    return vox[sorted(chosen)].reshape(-1, 3).astype(np.float64)


# ----------------------------------------------------------------------------- nodules
def _smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-sd smooth random field (for nodule heterogeneity)."""
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field_ / max(float(field_.std()), 1e-6)


def _paint_nodules(nodules: list[NoduleSpec], grid: _Grid, hu: np.ndarray, rng: np.random.Generator,
                   edge_mm: float = NODULE_EDGE_MM) -> None:
    """hu = bg + (nodule_hu - bg) * alpha, with alpha the reader fraction scaled so that the
    voxels at least half the readers marked (or, if none, the most-marked ones) are fully
    nodule, then blurred slightly: the edge is soft, partial-volume-like, where readers
    disagree, and a small nodule keeps its full density at its centre.

    Texture sets a solidity s = (texture - 2) / 2 in [0, 1]: the solid core is the part of
    the >= 50 % region deeper than (1.15 - 1.3 s) of its maximal depth; the rest is ground
    glass. So texture <= 2 is pure ground glass, 3 is a ground-glass rim around a solid
    core, >= 4 is solid."""
    pad = 2
    for nod in nodules:
        frac = np.asarray(nod.fraction, dtype=np.float32)
        peak = float(frac.max()) if frac.size else 0.0
        if peak <= 0:
            continue
        texture = 5.0 if not np.isfinite(nod.texture) else float(nod.texture)
        solidity = float(np.clip((texture - 2.0) / 2.0, 0.0, 1.0))
        ggo = HU_GGO_FAINT + (HU_GGO_DENSE - HU_GGO_FAINT) * float(np.clip(texture - 1.0, 0.0, 1.0))
        ggo += rng.uniform(-HU_GGO_JITTER, HU_GGO_JITTER)
        solid = rng.uniform(*HU_SOLID)
        opacity = np.pad(np.clip(frac / min(0.5, peak), 0.0, 1.0), pad)
        alpha = np.clip(ndimage.gaussian_filter(opacity, edge_mm / grid.spacing), 0.0, 1.0)
        marked = opacity >= 1.0
        depth = ndimage.distance_transform_edt(marked, sampling=grid.spacing)
        depth = depth / max(float(depth.max()), 1e-6)
        weight = np.clip((depth - (1.15 - 1.3 * solidity)) / 0.15, 0.0, 1.0)
        texture_field = _smooth_noise(opacity.shape, NODULE_TEXTURE_MM / grid.spacing, rng)
        nodule_hu = (ggo + HU_GGO_HETEROGENEITY * texture_field) * (1.0 - weight) \
            + (solid + HU_SOLID_HETEROGENEITY * texture_field) * weight
        # Place the padded crop; cut where it leaves the volume.
        start = np.asarray(nod.offset_zyx, dtype=int) - pad
        lo = np.maximum(start, 0)
        hi = np.minimum(start + np.asarray(opacity.shape), grid.shape)
        if np.any(hi <= lo):
            continue
        src = tuple(slice(lo[i] - start[i], hi[i] - start[i]) for i in range(3))
        dst = tuple(slice(lo[i], hi[i]) for i in range(3))
        bg = hu[dst]
        bg += (nodule_hu[src] - bg) * alpha[src]


# ----------------------------------------------------------------------------- acquisition
def _gaussian_taps(sigma: float) -> np.ndarray:
    """Normalised gaussian kernel truncated at GAUSS_TRUNCATE sigma (as scipy builds it)."""
    radius = int(GAUSS_TRUNCATE * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / max(sigma, 1e-6)) ** 2)
    return taps / taps.sum()


def _blur_z(volume: np.ndarray, sigma: float) -> None:
    """In-place gaussian along z (edges repeat), slice by slice: the strided 1-D filter
    along axis 0 is several times slower on a volume this size."""
    taps = _gaussian_taps(sigma)
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


def _acquire(hu: np.ndarray, grid: _Grid, slice_thickness_mm: float, profile: ScannerProfile,
             rng: np.random.Generator) -> np.ndarray:
    """Slice profile (gaussian, FWHM = slice thickness x profile factor) along z, kernel
    blur in-plane, correlated gaussian noise, clipping and rounding to int16. Works in
    place on hu."""
    fwhm_to_sigma = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    _blur_z(hu, slice_thickness_mm * profile.slice_fwhm_factor * fwhm_to_sigma / grid.spacing[0])
    psf = (0.0, profile.psf_sigma_mm / grid.spacing[1], profile.psf_sigma_mm / grid.spacing[2])
    ndimage.gaussian_filter(hu, psf, output=hu, mode="nearest", truncate=GAUSS_TRUNCATE)
    noise = rng.standard_normal(grid.shape, dtype=np.float32)
    kept_sd = 1.0
    if profile.noise_corr_px > 0:
        corr = profile.noise_corr_px
        ndimage.gaussian_filter(noise, (0.0, corr, corr), output=noise, truncate=GAUSS_TRUNCATE)
        # A 1-D kernel keeps sum(taps^2) of the variance; two axes keep its square, so the sd
        # left is sum(taps^2) itself.
        kept_sd = float(np.sum(_gaussian_taps(corr) ** 2))
    noise *= profile.noise_sd_hu / kept_sd
    hu += noise
    del noise
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    np.rint(hu, out=hu)
    return hu.astype(np.int16)


# ----------------------------------------------------------------------------- entry point
def render_ct(shape_zyx: tuple[int, int, int], spacing_zyx: tuple[float, float, float],
              slice_thickness_mm: float, nodules: list[NoduleSpec],
              profile: ScannerProfile, rng: np.random.Generator, edge_mm: float = NODULE_EDGE_MM) -> RenderedCT:
    """Render one synthetic chest CT around the given nodules (see the module docstring).
    ``edge_mm``: blur of the nodules' partial-volume edge.

    Deterministic in (inputs, rng state). The anatomy draws come first and do not depend on
    the profile, so one seed gives the same chest under every profile."""
    grid = _Grid(tuple(int(n) for n in shape_zyx), np.asarray(spacing_zyx, dtype=np.float64))
    anat = _draw_anatomy(rng)
    frame = _fit_frame(anat, grid, nodules, rng)
    hu, labels = _paint_volume(anat, frame)
    _add_nodule_balls(anat, frame, nodules, hu, labels)
    lung = _lung_map(anat, frame)
    vessels, forks = _grow_vessels(anat, frame, lung, rng)
    airways = _grow_airways(anat, frame, lung, rng)
    _paint_trees(anat, grid, nodules, vessels, airways, hu, labels)
    _enforce_nodule_labels(frame, nodules, labels)
    candidates = _vessel_candidates(vessels, forks, labels, nodules, grid, rng)
    _paint_nodules(nodules, grid, hu, rng, edge_mm)
    return RenderedCT(_acquire(hu, grid, slice_thickness_mm, profile, rng), labels, candidates)
