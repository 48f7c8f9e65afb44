"""``make_patient``: a digital DBS patient with its ground truth, deterministic per seed.

Spaces (all RAS mm): MNI (atlases), anat (the patient's own head; ``mni = S·anat + disp(anat)``),
and one world per image: ``world = pose @ anat`` for the GRE, the T1 and the CT. The T1 world is the
reference: landmarks, STN centroids and veins are given in T1 RAS; ``transforms["t1_from_gre"]``
maps GRE-world points to T1-world points (``a_from_b`` maps points of b to a).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.fft as sfft

from ..io.gre import MultiEchoGRE, b0_dir_from_geometry
from ..progress import as_progress
from ..volume import Volume, ras_from_ijk_matrix, rotation_matrix
from . import anatomy
from .deform import random_deformation, random_pose, rigid
from .forward import dipole_field, gre_signal
from .sampling import sample_map
from .veins import make_veins

# AC, PC (centres of the commissures, read off the ICBM152 2009a template) and a mid-sagittal point, MNI mm
LANDMARKS_MNI = {"AC": (0.0, 2.5, -5.0), "PC": (0.0, -25.5, -2.5), "MS": (0.0, -12.0, 40.0)}
GRE_FOV_MM = np.array([256.0, 256.0, 128.0])
T1_FOV_MM = np.array([200.0, 240.0, 228.0])
T1_VOXEL_MM = np.array([1.0, 1.0, 1.2])
CT_BOX_FRAMERAS = ((-107.0, 107.0), (-118.0, 123.0), (-68.0, 100.0))   # covers the localizer + head
CT_VOXEL_MM = np.array([0.8, 0.8, 1.5])
HEAD_BOX_ANAT = ((-96.0, 96.0), (-132.0, 116.0), (-146.0, 106.0))    # head and neck, for the field grid
FIELD_PAD_MM = 16.0
LOCAL_PAD_MM = 32.0
GRE_CENTRE_ANAT = np.array([0.0, -18.0, 16.0])
SLAB_CENTRE_ANAT = np.array([0.0, -14.0, -2.0])   # a thin GRE slab: over the STNs and basal ganglia
T1_CENTRE_ANAT = np.array([0.0, -12.0, -4.0])


@dataclass
class DigitalPatient:
    gre: MultiEchoGRE
    t1: Volume
    ct: Volume | None
    truth: dict                      # Volumes on the GRE grid (+ "labels_t1" on the T1 grid)
    labels_t1: Volume
    landmarks: dict                  # {"AC", "PC", "MS"}: T1 RAS mm (centres of the commissures)
    transforms: dict                 # 4x4 RAS: t1_from_gre, t1_from_ct, xyz_from_ct, t1_from_mni, ...
    stn_centroids: dict              # {"STN_L", "STN_R"}: T1 RAS mm
    label_names: dict                # {value: name}
    seed: int
    veins: list = field(default_factory=list)               # dicts, points in T1 RAS mm
    standard_trajectories: dict = field(default_factory=dict)  # side -> {"target", "entry"} T1 RAS
    params: dict = field(default_factory=dict)


def _grid_matrix(voxel, direction, centre_world, shape):
    m = ras_from_ijk_matrix(voxel, direction)
    m[:3, 3] = np.asarray(centre_world) - m[:3, :3] @ ((np.asarray(shape, float) - 1.0) / 2.0)
    return m


def _apply(m, pts):
    pts = np.atleast_2d(np.asarray(pts, float))
    return pts @ m[:3, :3].T + m[:3, 3]


class _Sampler:
    """Samples model maps on a grid placed in a world where the head sits at ``world_from_anat``."""

    def __init__(self, model: anatomy.PaintedModel, deformation):
        self.model = model
        self.deformation = deformation

    def __call__(self, src, ras_from_ijk, shape, world_from_anat, nearest=False, fill=0.0):
        anat_from_ijk = np.linalg.inv(world_from_anat) @ ras_from_ijk
        model_from_ijk = self.model.grid.idx_from_mni @ self.deformation.mni_from_anat_affine @ anat_from_ijk
        disp_from_ijk = self.deformation.dispidx_from_anat @ anat_from_ijk
        return sample_map(src, shape, model_from_ijk, disp_from_ijk, self.deformation.disp,
                          self.model.grid.spacing, nearest=nearest, fill=fill)


def _smooth_polynomial(rng, shape, amplitude, order=2):
    """A random smooth polynomial field over a grid (normalised coordinates in [-1, 1])."""
    ax = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    x, y, z = ax[0][:, None, None], ax[1][None, :, None], ax[2][None, None, :]
    terms = [x, y, z]
    if order >= 2:
        terms += [x * x, y * y, z * z, x * y, y * z, x * z]
    out = np.zeros(shape, np.float32)
    for t in terms:
        out = out + np.float32(rng.normal(0.0, amplitude / np.sqrt(len(terms)))) * t
    return out


def local_field(chi_brain: np.ndarray, voxel, b0_dir, pad_mm: float = LOCAL_PAD_MM) -> np.ndarray:
    """Field (ppm) of the brain sources alone, on their grid zero-padded by ``pad_mm`` per side."""
    pad = [int(np.ceil(pad_mm / v)) for v in voxel]
    shape = tuple(int(sfft.next_fast_len(n + 2 * p, real=True)) for n, p in zip(chi_brain.shape, pad))
    embed = np.zeros(shape, np.float32)
    sl = tuple(slice(p, p + n) for p, n in zip(pad, chi_brain.shape))
    embed[sl] = chi_brain
    return dipole_field(embed, voxel, b0_dir)[sl]


def _gre_fov(slab_mm):
    """GRE field of view (mm) and its centre (anat mm): the whole brain, or a thin slab over the STNs."""
    if slab_mm is None:
        return GRE_FOV_MM, GRE_CENTRE_ANAT
    if not 8.0 <= float(slab_mm) <= GRE_FOV_MM[2]:
        raise ValueError(f"slab thickness must be 8-{GRE_FOV_MM[2]:g} mm")
    return np.array([GRE_FOV_MM[0], GRE_FOV_MM[1], float(slab_mm)]), SLAB_CENTRE_ANAT


def _fit_affine(src_pts, dst_pts) -> np.ndarray:
    a = np.hstack([src_pts, np.ones((len(src_pts), 1))])
    sol, *_ = np.linalg.lstsq(a, dst_pts, rcond=None)
    m = np.eye(4)
    m[:3, :] = sol.T
    return m


# ---- harder digital heads (issue 18): departures from the default patient, for QSM benchmarks ---------
@dataclass(frozen=True)
class HeadVariation:
    """What a harder head changes; every default leaves the default patient unchanged. Its random
    draws come from their own generator (seed + 7919) so the rest of the patient stays the same."""
    name: str = "default"
    chi_scale_nuclei: float = 1.0        # deep nuclei chi x this
    chi_wm_ppm: float | None = None      # white matter chi (default -0.03)
    chi_gm_ppm: float | None = None      # cortical grey matter chi (default 0.01)
    extra_cortical_veins: int = 0        # more cortical veins per hemisphere
    ear_canals: bool = False             # air in the external auditory canals (temporal-lobe fields)
    sinus_scale: float = 1.0             # paranasal sinuses / mastoids enlarged by this (semi-axes)
    coil_combination: str = "ideal"      # "ideal" | "phase-of-sum": 8 coils, RSS magnitude, phase of their
    #                                      sum | "sum": magnitude and phase of the plain sum (dropouts)
    chi_texture_ppm: float = 0.0         # fine chi texture in the brain (SD, ppm; ~1 mm correlation):
    #                                      microstructure that no piecewise-smooth prior recovers


EAR_CANALS_MNI = (((-63.0, -22.0, -46.0), (12.0, 3.5, 3.5)), ((63.0, -22.0, -46.0), (12.0, 3.5, 3.5)))


def _vary_model(model, variation: HeadVariation, rng):
    """chi of nuclei, WM and GM, fine chi texture in the brain; air in ear canals and larger sinuses
    (outside the brain only)."""
    lab = model.labels
    if variation.chi_scale_nuclei != 1.0:
        nuclei = (lab > 0) & (lab < 200)            # CIT168 labels 1..16 and 101..116
        model.chi[nuclei] *= np.float32(variation.chi_scale_nuclei)
    for label, value, default in ((anatomy.WM, variation.chi_wm_ppm, anatomy.TISSUE["wm"][0]),
                                  (anatomy.GM, variation.chi_gm_ppm, anatomy.TISSUE["gm"][0])):
        if value is not None:
            model.chi[lab == label] += np.float32(value - default)
    if variation.chi_texture_ppm:
        brain = (model.brain > 127) & (lab != anatomy.CSF)
        noise = anatomy.smooth_noise(rng, lab.shape, 1.0 / model.grid.spacing)
        model.chi[brain] += np.float32(variation.chi_texture_ppm) * noise[brain]
        del noise
    cavities = []
    if variation.ear_canals:
        cavities += list(EAR_CANALS_MNI)
    if variation.sinus_scale != 1.0:
        cavities += [(c, np.asarray(s) * variation.sinus_scale) for _, c, s in anatomy.CAVITIES]
    for centre, semi in cavities:
        occ, sl = anatomy._ellipsoid(model.grid, np.asarray(centre) + rng.normal(0.0, 1.0, 3), semi)
        if occ is None:
            continue
        occ = occ * (model.brain[sl] == 0) * np.isin(lab[sl], [0, anatomy.SKULL, anatomy.SCALP])
        keep = np.float32(1.0) - occ
        model.chi[sl] = model.chi[sl] * keep + np.float32(anatomy.CHI_AIR) * occ
        model.pd[sl] *= keep
        model.r2s[sl] *= keep
    return model


def _coil_combination(rng, shape, voxel, n_coils: int = 8, rss_magnitude: bool = True):
    """Receive-coil effects of ``n_coils`` coils around the head, each with its own smooth phase:
    phase of the plain coil sum (no phase matching): an echo-independent offset with steep regions and
    singular lines where the coil phasors cancel; magnitude as the scanner's root-sum-of-squares
    combination (smooth, brighter near the coils), or (``rss_magnitude`` False) of the plain sum, with
    deep signal dropouts where the phasors cancel."""
    centre = (np.asarray(shape) - 1) / 2.0
    g = [((np.arange(n) - c) * v).astype(np.float32) for n, c, v in zip(shape, centre, voxel)]
    radius = 0.55 * float(np.min(np.asarray(shape) * voxel))
    total = np.zeros(shape, np.complex64)
    rss = np.zeros(shape, np.float32)
    for c in range(n_coils):
        a = 2 * np.pi * c / n_coils + rng.normal(0.0, 0.15)
        p = (radius * np.cos(a), radius * np.sin(a), rng.normal(0.0, 20.0))
        d2 = (g[0][:, None, None] - p[0]) ** 2 + (g[1][None, :, None] - p[1]) ** 2 + (g[2][None, None, :] - p[2]) ** 2
        w = np.exp(-d2 / np.float32(2 * 90.0 ** 2))
        slope = rng.normal(0.0, 0.012, 3)
        theta = (np.float32(rng.uniform(-np.pi, np.pi)) + np.float32(slope[0]) * g[0][:, None, None]
                 + np.float32(slope[1]) * g[1][None, :, None] + np.float32(slope[2]) * g[2][None, None, :])
        total += (w * np.exp(1j * theta)).astype(np.complex64)
        rss += w * w
    mag = np.sqrt(rss) if rss_magnitude else np.abs(total)
    return (mag / np.float32(np.percentile(mag, 95))).astype(np.float32), np.angle(total).astype(np.float32)


def third_ventricle_truth(width_mni_mm: float, landmarks: dict, mni_from_t1, ap_fraction: float = 0.25) -> dict:
    """Where the walls of the painted third ventricle (|x_MNI| = width/2) cross the AC-PC x axis on the
    AC-PC plane, ``ap_fraction`` of the AC-PC length anterior to the PC (the VIM's AP level): signed AC-PC
    x (mm, + right) of each wall in T1 space, found by bisection through the patient's deformation."""
    from ..stereotaxy.coordinates import acpc_from_ras
    m = acpc_from_ras(landmarks["AC"], landmarks["PC"], landmarks["MS"])
    length = float(np.linalg.norm(np.asarray(landmarks["AC"]) - landmarks["PC"]))
    ap = (ap_fraction - 0.5) * length
    ras_from_acpc = np.linalg.inv(m)

    def mni_x(x_acpc):
        return float(mni_from_t1(_apply(ras_from_acpc, [x_acpc, ap, 0.0]))[0, 0])

    walls = {}
    for side, sign in (("left", -1.0), ("right", 1.0)):
        lo, hi = 0.0, 20.0 * sign                     # from the midline outwards
        for _ in range(60):
            mid = (lo + hi) / 2.0
            if sign * mni_x(mid) < width_mni_mm / 2.0:
                lo = mid
            else:
                hi = mid
        walls[side] = (lo + hi) / 2.0
    return {"width_mni_mm": float(width_mni_mm), "ap_acpc_mm": ap, "vertical_acpc_mm": 0.0,
            "left_wall_x_acpc_mm": walls["left"], "right_wall_x_acpc_mm": walls["right"],
            "width_mm": walls["right"] - walls["left"], "space": "T1 RAS, AC-PC coordinates of the true landmarks"}


def make_patient(seed: int = 0, small: bool = False, tilt_deg: float = 0.0, voxel_mm=(1, 1, 1),
                 field_t: float = 3.0, n_echoes: int = 5, snr: float = 100.0,
                 veins_on_standard_trajectory: bool = False, slab_mm: float | None = None,
                 progress=None, variation: HeadVariation | None = None, frame: str = "leksell") -> DigitalPatient:
    """Build the digital patient of ``seed``.

    ``small``: twice the voxel size (same field of view) and a 2 mm model: a few seconds, for tests.
    ``tilt_deg``: the GRE slab is rotated about the R axis (oblique acquisition: B0 is not along k).
    ``voxel_mm``: GRE voxel size (mm); the field of view stays 256×256×128 mm. ``field_t``: B0 (T);
    ``n_echoes``: echoes (TE₁ 5 ms, ΔTE 6 ms at 3 T; 4/4 ms at 7 T); ``snr``: first-echo brain SNR.
    ``slab_mm``: a thin GRE slab (this thickness instead of 128 mm) centred over the STNs.
    ``variation``: a harder head (``HeadVariation``: chi values, vein density, air cavities, coil
    combination); None is the default patient.
    ``frame``: the stereotactic frame on the CT ('leksell', 'crw' or 'brw'; its N-localizer, with the
    frame's pins, posts, ring and the localizer's plates for the CRW and BRW).
    """
    progress = as_progress(progress)
    if n_echoes < 1:
        raise ValueError("n_echoes must be >= 1")
    if snr <= 0:
        raise ValueError("snr must be > 0")
    rng = np.random.default_rng(int(seed))
    voxel = np.asarray(voxel_mm, float).reshape(3) * (2.0 if small else 1.0)
    h = 2.0 if small else 1.0
    progress.update(0.0, "anatomy")
    deformation = random_deformation(rng)
    pose_gre = random_pose(rng, 6.0, 6.0)
    pose_t1 = random_pose(rng, 6.0, 8.0)
    anat_from_frameras = rigid(rng.normal(0.0, 2.5, 3), [rng.normal(0.0, 2.0), -12.0 + rng.normal(0.0, 3.0),
                                                          rng.normal(0.0, 3.0)])
    ct_from_frameras = rigid(rng.normal(0.0, 1.0, 3), rng.normal(0.0, 4.0, 3))
    pose_ct = ct_from_frameras @ np.linalg.inv(anat_from_frameras)

    veins, traj_mni = make_veins(rng, h, veins_on_standard_trajectory)
    var_rng = np.random.default_rng(int(seed) + 7919) if variation is not None else None
    if variation is not None and variation.extra_cortical_veins:
        from .veins import extra_cortical_veins
        veins = veins + extra_cortical_veins(var_rng, h, variation.extra_cortical_veins)
    model = anatomy.paint(h, rng, veins, field_t=field_t, progress=progress.sub(0.02, 0.35))
    if variation is not None:
        model = _vary_model(model, variation, var_rng)
    sampler = _Sampler(model, deformation)

    # ---- GRE grid and the larger field grid aligned with it ---------------------------------------
    progress.update(0.35, "susceptibility and field")
    direction_gre = rotation_matrix([tilt_deg, 0.0, 0.0])
    fov_gre, centre_anat = _gre_fov(slab_mm)
    shape_gre = tuple(int(max(8, round(f / v))) for f, v in zip(fov_gre, voxel))
    centre_gre = _apply(pose_gre, centre_anat)[0]
    gre_m = _grid_matrix(voxel, direction_gre, centre_gre, shape_gre)
    b0_dir = b0_dir_from_geometry(gre_m)
    corners = np.array([[HEAD_BOX_ANAT[0][a], HEAD_BOX_ANAT[1][b], HEAD_BOX_ANAT[2][c]]
                        for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    ijk = _apply(np.linalg.inv(gre_m) @ pose_gre, corners)
    pad = np.ceil(FIELD_PAD_MM / voxel)
    lo = np.minimum(np.floor(ijk.min(0)) - pad, 0).astype(int)
    hi = np.maximum(np.ceil(ijk.max(0)) + pad + 1, shape_gre).astype(int)
    shape_field = tuple(int(sfft.next_fast_len(int(n), real=True)) for n in hi - lo)
    field_m = gre_m.copy()
    field_m[:3, 3] = gre_m[:3, :3] @ lo + gre_m[:3, 3]
    crop = tuple(slice(-lo[d], -lo[d] + shape_gre[d]) for d in range(3))
    chi_field = sampler(model.chi, field_m, shape_field, pose_gre, fill=anatomy.CHI_AIR)
    chi_field -= np.float32(anatomy.CHI_AIR)          # χ relative to air: zero outside the head
    total_raw = dipole_field(chi_field, voxel, b0_dir)[crop]
    chi_gre = chi_field[crop] + np.float32(anatomy.CHI_AIR)
    del chi_field
    progress.update(0.55, "tissue maps")
    brain_gre = sampler(model.brain, gre_m, shape_gre, pose_gre) > 127.5  # uint8 fraction
    labels_gre = sampler(model.labels, gre_m, shape_gre, pose_gre, nearest=True)
    chi_brain = np.where(brain_gre, chi_gre, 0.0).astype(np.float32)
    local = local_field(chi_brain, voxel, b0_dir)
    # scanner shim: remove the best constant + linear field over the brain (a harmonic field)
    idx = np.argwhere(brain_gre)
    if len(idx) > 10:
        sub = idx[:: max(1, len(idx) // 200000)]
        a = np.hstack([np.ones((len(sub), 1)), sub.astype(float)])
        coef, *_ = np.linalg.lstsq(a, total_raw[tuple(sub.T)], rcond=None)
        ii = [np.arange(n, dtype=np.float32) for n in shape_gre]
        shim = (np.float32(coef[0]) + np.float32(coef[1]) * ii[0][:, None, None]
                + np.float32(coef[2]) * ii[1][None, :, None] + np.float32(coef[3]) * ii[2][None, None, :])
    else:
        coef, shim = np.zeros(4), np.float32(0.0)
    total = (total_raw - shim).astype(np.float32)
    del total_raw

    # ---- multi-echo GRE -----------------------------------------------------------------------------
    progress.update(0.65, "multi-echo GRE")
    if field_t >= 5.0:
        te = 0.004 + 0.004 * np.arange(n_echoes)
    else:
        te = 0.005 + 0.006 * np.arange(n_echoes)
    pd = sampler(model.pd, gre_m, shape_gre, pose_gre)
    r2s = sampler(model.r2s, gre_m, shape_gre, pose_gre)
    coil = np.exp(_smooth_polynomial(rng, shape_gre, 0.25)).astype(np.float32)
    m0 = (1000.0 * pd * coil).astype(np.float32)
    phase0 = (np.float32(rng.uniform(-np.pi, np.pi)) + _smooth_polynomial(rng, shape_gre, 2.0)).astype(np.float32)
    if variation is not None and variation.coil_combination in ("phase-of-sum", "sum"):
        coil_mag, coil_phase = _coil_combination(var_rng, shape_gre, voxel,
                                                 rss_magnitude=variation.coil_combination == "phase-of-sum")
        m0 *= coil_mag
        phase0 = (phase0 + coil_phase).astype(np.float32)
        del coil_mag, coil_phase
    elif variation is not None and variation.coil_combination != "ideal":
        raise ValueError(f"unknown coil combination {variation.coil_combination!r}")
    mag, pha, sigma = gre_signal(m0, r2s, total, phase0, te, field_t, voxel, snr, brain_gre, rng)
    del pd, r2s, coil, m0
    gre = MultiEchoGRE(magnitude=mag, phase_rad=pha, te_s=te, b0_tesla=float(field_t), ras_from_ijk=gre_m,
                       b0_dir_ijk=b0_dir, phase_scaling="radians (digital patient)",
                       source=f"digital patient seed {seed}")

    # ---- planning T1 ------------------------------------------------------------------------------
    progress.update(0.78, "planning T1")
    t1_voxel = T1_VOXEL_MM * (2.0 if small else 1.0)
    shape_t1 = tuple(int(round(f / v)) for f, v in zip(T1_FOV_MM, t1_voxel))
    t1_m = _grid_matrix(t1_voxel, np.eye(3), _apply(pose_t1, T1_CENTRE_ANAT)[0], shape_t1)
    t1w = sampler(model.t1w, t1_m, shape_t1, pose_t1)
    bias = np.exp(_smooth_polynomial(rng, shape_t1, 0.15)).astype(np.float32)
    t1w *= np.float32(1000.0) * bias
    del bias
    s_t1 = np.float32(12.0)
    t1w += s_t1 * rng.standard_normal(shape_t1, dtype=np.float32)
    t1w = np.hypot(t1w, s_t1 * rng.standard_normal(shape_t1, dtype=np.float32))
    t1 = Volume(np.round(t1w), t1_m, "T1", {"modality": "T1w"})  # whole numbers, as a scanner stores them
    labels_t1 = Volume(sampler(model.labels, t1_m, shape_t1, pose_t1, nearest=True), t1_m, "labels_t1")

    # ---- CT with the N-localizer ----------------------------------------------------------------------
    progress.update(0.86, "CT and localizer")
    from ..stereotaxy.synthetic import Clutter, clutter_extent_s, render_frame_ct
    from ..stereotaxy.frames import get_system
    system = get_system(frame)
    ct_voxel = CT_VOXEL_MM * (2.0 if small else 1.0)
    # the box around the localizer (rods + 20 mm; Leksell: CT_BOX_FRAMERAS), from the frame's base ring up
    # to the head's top
    box = np.array(CT_BOX_FRAMERAS)
    if system.key != "leksell":
        rods = np.array([p for name in system.required_plates for rod in system.plates[name].rods() for p in rod])
        box = np.array([[rods[:, 0].min() - 20.0, rods[:, 0].max() + 20.0],
                        [rods[:, 1].min() - 20.0, rods[:, 1].max() + 20.0],
                        [0.0, CT_BOX_FRAMERAS[2][1]]])
    box[2, 0] = clutter_extent_s(system) - 2.0
    shape_ct = tuple(int(np.ceil((b[1] - b[0]) / v)) + 1 for b, v in zip(box, ct_voxel))
    centre_ct = _apply(ct_from_frameras, box.mean(1))[0]
    ct_m = _grid_matrix(ct_voxel, np.eye(3), centre_ct, shape_ct)
    hu = sampler(model.hu, ct_m, shape_ct, pose_ct, fill=-1000.0)
    frame_from_ct = np.linalg.inv(ct_from_frameras)
    xyz_from_ct = system.native_from_ras(frame_from_ct)
    # the clinical hardware of every frame: pins, posts, base ring, localizer plates, head holder and table
    # (the head is the patient's own; no contrast vessels or dental metal)
    hardware = Clutter(head=False, vessels=0, dental_metal=False)
    ct = render_frame_ct(ct_m, shape_ct, frame_from_ct, system, background=hu, clutter=hardware,
                         noise_hu=8.0, rng=rng)
    # whole-number HU stored as int16, as scanners store them (rendered in float: same noise as before)
    ct = ct.with_data(np.clip(np.rint(ct.data), -1024, np.iinfo(np.int16).max).astype(np.int16), "CT")
    del hu

    # ---- truth: landmarks, transforms, centroids, veins ---------------------------------------------------
    progress.update(0.95, "ground truth")

    def mni_to_t1(pts):
        return _apply(pose_t1, deformation.anat_from_mni(pts))

    landmarks = {k: mni_to_t1(v)[0] for k, v in LANDMARKS_MNI.items()}
    third_ventricle = third_ventricle_truth(model.info["third_ventricle_mni"]["width_mm"], landmarks,
                                            lambda p: deformation.mni_from_anat(_apply(np.linalg.inv(pose_t1), p)))
    stn = {}
    for name, v in (("STN_L", 16), ("STN_R", 116)):
        pts = np.argwhere(labels_t1.data == v)
        stn[name] = labels_t1.ijk_to_ras(pts.mean(0)) if len(pts) else np.full(3, np.nan)
    # affine part of MNI -> T1: least squares over brain points
    g = np.stack(np.meshgrid(*[np.linspace(-60, 60, 9), np.linspace(-90, 60, 11), np.linspace(-40, 70, 9)],
                             indexing="ij"), -1).reshape(-1, 3)
    t1_from_mni = _fit_affine(deformation.mni_from_anat(g), _apply(pose_t1, g))
    transforms = {"t1_from_gre": pose_t1 @ np.linalg.inv(pose_gre),
                  "t1_from_ct": pose_t1 @ np.linalg.inv(pose_ct),
                  "xyz_from_ct": xyz_from_ct,          # CT RAS -> the frame's native coordinates
                  "frame_from_ct": frame_from_ct,      # CT RAS -> frame RAS (ct.meta names the frame)
                  "ct_from_frameras": ct_from_frameras,
                  "t1_from_mni": t1_from_mni}
    vein_dicts = [v.to_dict(mni_to_t1(v.points)) for v in veins]
    trajectories = {side: {"target": mni_to_t1(t)[0], "entry": mni_to_t1(e)[0]}
                    for side, (t, e) in traj_mni.items()}
    truth = {
        "chi_ppm": Volume(chi_brain, gre_m.copy(), "chi_ppm",
                          {"units": "ppm", "reference": "CSF/water = 0; zero outside brain_mask"}),
        "local_field_ppm": Volume(local, gre_m.copy(), "local_field_ppm",
                                  {"units": "ppm of B0", "sources": "chi_ppm inside brain_mask"}),
        "total_field_ppm": Volume(total, gre_m.copy(), "total_field_ppm",
                                  {"units": "ppm of B0", "note": "all tissue, skull, air; after a linear shim"}),
        "brain_mask": Volume(brain_gre.astype(np.uint8), gre_m.copy(), "brain_mask"),
        "labels_gre": Volume(labels_gre, gre_m.copy(), "labels_gre"),
        "labels_t1": labels_t1,
    }
    params = {"seed": int(seed), "small": bool(small), "tilt_deg": float(tilt_deg), "voxel_mm": voxel.tolist(),
              "field_t": float(field_t), "n_echoes": int(n_echoes), "snr": float(snr),
              "noise_sd": float(sigma), "te_s": te.tolist(), "b0_dir_ijk": np.asarray(b0_dir).tolist(),
              "veins_on_standard_trajectory": bool(veins_on_standard_trajectory),
              "slab_mm": None if slab_mm is None else float(slab_mm), "frame": system.key,
              "shim_coefficients_ppm": np.asarray(coef, float).tolist(),
              "landmark_definition": "centres of the anterior and posterior commissures",
              "field_grid_shape": list(shape_field), "model_spacing_mm": h,
              "cavities_mni": model.info.get("cavities"),
              "pineal_calcification_mni": model.info.get("pineal_calcification_mni"),
              "variation": None if variation is None else dict(variation.__dict__),
              "third_ventricle": third_ventricle}
    progress.update(1.0, "digital patient ready")
    return DigitalPatient(gre=gre, t1=t1, ct=ct, truth=truth, labels_t1=labels_t1, landmarks=landmarks,
                          transforms=transforms, stn_centroids=stn, label_names=anatomy.label_names(),
                          seed=int(seed), veins=vein_dicts, standard_trajectories=trajectories, params=params)
