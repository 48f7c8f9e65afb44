"""Registration test images made from a real head T1 (skull, scalp fat, neck): a GRE-like magnitude
and a CT-like image in a known pose, on their own grids (whole head or a thin, possibly oblique slab),
with a receive bias field, slice-profile blur and Rician noise.

``t1_from_moving`` (RAS 4x4) maps points of the made image's world to the T1 world: the truth.
"""
from __future__ import annotations

import numpy as np

from ..volume import Volume, ras_from_ijk_matrix, rotation_matrix

# normalised T1 (0 = air, 1 = the 99.5th percentile of the head) -> GRE magnitude (T2*/PD-weighted):
# air and bone dark, CSF brightest, grey above white matter, fat and marrow moderately bright
GRE_CONTRAST = ((0.0, 0.0), (0.05, 0.03), (0.12, 0.55), (0.25, 0.95), (0.45, 0.72), (0.62, 0.62),
                (0.75, 0.5), (0.9, 0.62), (1.0, 0.7), (3.0, 0.7))


def pose_matrix(angles_deg, shift_mm) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(angles_deg)
    m[:3, 3] = shift_mm
    return m


def normalised_t1(t1: Volume) -> np.ndarray:
    """T1 scaled to 0 (background) .. 1 (99.5th percentile of the head voxels), float32."""
    d = np.asarray(t1.data, np.float32)
    head = d > np.percentile(d, 60) * 0.3 + 1e-6
    hi = np.percentile(d[head], 99.5) if head.any() else float(d.max() or 1.0)
    return np.clip(d / max(hi, 1e-6), 0, 3).astype(np.float32)


def slab_grid(centre_ras, voxel_mm, fov_mm, thickness_mm=None, tilt_deg=0.0) -> Volume:
    """An empty acquisition grid centred on ``centre_ras``: axial, tilted by ``tilt_deg`` about R;
    ``thickness_mm`` (slab) replaces the third field-of-view extent."""
    voxel = np.asarray(voxel_mm, float)
    fov = np.array(fov_mm, float)
    if thickness_mm is not None:
        fov[2] = thickness_mm
    shape = tuple(int(max(2, round(f / v))) for f, v in zip(fov, voxel))
    m = ras_from_ijk_matrix(voxel, rotation_matrix([tilt_deg, 0.0, 0.0]))
    m[:3, 3] = np.asarray(centre_ras, float) - m[:3, :3] @ ((np.asarray(shape, float) - 1) / 2)
    return Volume(np.zeros(shape, np.float32), m)


def _sample(t1: Volume, values: np.ndarray, grid: Volume, t1_from_grid_world: np.ndarray,
            blur_voxel=None, fill=0.0) -> np.ndarray:
    """``values`` (on t1's grid) sampled at the grid voxels placed by ``t1_from_grid_world``;
    a Gaussian slice profile/anti-aliasing blur for grid axes coarser than the T1 voxels."""
    import SimpleITK as sitk
    src = t1.with_data(values.astype(np.float32)).to_sitk()
    ref = Volume(np.zeros(grid.shape3, np.uint8), t1_from_grid_world @ grid.ras_from_ijk).to_sitk()
    if blur_voxel is not None:
        # blur along the grid's own axes would need an oriented kernel; an isotropic one of the
        # in-plane size plus resampling at the slice positions is a fair slice profile here
        sig = max(0.0, (float(np.min(blur_voxel)) ** 2 - float(np.min(t1.voxel_mm)) ** 2)) ** 0.5 / 2.355
        if sig > 0.05:
            src = sitk.SmoothingRecursiveGaussian(src, sig)
    out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, float(fill), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def _thick_slices(t1, values, grid, t1_from_world, fill=0.0):
    """Average of sub-slices across each slice thickness (a box slice profile along k)."""
    n_sub = int(max(1, round(grid.voxel_mm[2] / float(np.min(t1.voxel_mm)))))
    acc = None
    for s in (np.arange(n_sub) + 0.5) / n_sub - 0.5:
        m = grid.ras_from_ijk.copy()
        m[:3, 3] = m[:3, 3] + m[:3, 2] * s
        sub = _sample(t1, values, Volume(grid.data, m), t1_from_world, grid.voxel_mm[:2], fill)
        acc = sub if acc is None else acc + sub
    return acc / n_sub


def bias_field(shape, rng, amplitude=0.3) -> np.ndarray:
    """Smooth multiplicative receive field exp(quadratic polynomial), mean ~1."""
    ax = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    x, y, z = ax[0][:, None, None], ax[1][None, :, None], ax[2][None, None, :]
    terms = [x, y, z, x * x, y * y, z * z, x * y, y * z, x * z]
    out = np.zeros(shape, np.float32)
    for t in terms:
        out = out + np.float32(rng.normal(0.0, amplitude / 3.0)) * t
    return np.exp(out)


def rician(signal: np.ndarray, sigma: float, rng) -> np.ndarray:
    n1 = rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sigma)
    n2 = rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sigma)
    return np.hypot(signal + n1, n2).astype(np.float32)


def gre_like(t1: Volume, grid: Volume, t1_from_gre: np.ndarray, rng, snr: float = 25.0,
             bias_amplitude: float = 0.35) -> Volume:
    """GRE-like magnitude of the head in ``t1`` on ``grid`` (a GRE world where the head sits at
    ``inv(t1_from_gre)``): nonlinear contrast (CSF bright, bone/air dark), slice profile, receive bias
    field, Rician noise (``snr`` = mean brain-ish signal / sigma)."""
    xp, fp = zip(*GRE_CONTRAST)
    contrast = np.interp(normalised_t1(t1), xp, fp).astype(np.float32)
    sig = _thick_slices(t1, contrast, grid, t1_from_gre) * bias_field(grid.shape3, rng, bias_amplitude)
    sigma = 0.65 / snr
    return grid.with_data(1000.0 * rician(sig, sigma, rng), name="GRE-like")


def ct_like(t1: Volume, grid: Volume, t1_from_ct: np.ndarray, rng, brain: np.ndarray,
            noise_hu: float = 12.0, csf_mm: float = 2.5) -> Volume:
    """CT-like image (HU) of the head in ``t1`` (``brain``: its brain mask, bool on t1's grid): CSF
    (8 HU) for ``csf_mm`` outside the brain mask where the T1 is dark, then the skull, a 5-8 mm shell
    inside the head (750-1400 HU, brighter where the T1 is darker); soft tissue 20-45 HU, fat -90 HU,
    air and sinuses -1000 HU."""
    from scipy import ndimage
    n = normalised_t1(t1)
    head = ndimage.binary_fill_holes(ndimage.binary_closing(n > 0.08, iterations=3))
    head = ndimage.binary_opening(head, iterations=2)
    dist = ndimage.distance_transform_edt(~brain, sampling=t1.voxel_mm)
    thick = 6.5 + 1.5 * np.tanh(ndimage.gaussian_filter(rng.standard_normal(n.shape).astype(np.float32), 8.0) * 40)
    csf = head & (dist > 0) & (dist <= csf_mm) & (n < 0.3)
    skull = head & (dist > csf_mm) & (dist < csf_mm + thick)
    hu = np.where(head, 35.0 - 20.0 * np.clip((n - 0.3) / 0.5, 0, 1), -1000.0).astype(np.float32)
    hu[csf] = 8.0
    hu[head & ~brain & (n > 0.9)] = -90.0                          # fat is the brightest on T1
    hu[head & ~brain & ~skull & (n < 0.06)] = -1000.0             # sinuses, airways
    hu[skull] = 750.0 + 650.0 * np.clip((0.6 - n[skull]) / 0.5, 0, 1)
    out = _thick_slices(t1, hu, grid, t1_from_ct, fill=-1000.0)
    out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(noise_hu)
    return grid.with_data(out.astype(np.float32), name="CT-like")
