"""Small analytic multi-echo GRE simulations for tests and checks (not the digital patient).

A head-like ellipsoid "brain" holding spheres/cylinders of known chi, a skull shell (no signal) and
scalp, an air background source, a smooth phase offset, complex Gaussian noise; the field comes from
``dipole.forward_field`` with B0 in the voxel frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.gre import GAMMA_HZ_PER_T, MultiEchoGRE, b0_dir_from_geometry
from ..volume import ras_from_ijk_matrix, rotation_matrix
from .dipole import forward_field


@dataclass
class SimulatedGRE:
    gre: MultiEchoGRE
    chi_ppm: np.ndarray          # truth, brain only (mean 0 in the brain)
    brain_mask: np.ndarray
    local_field_ppm: np.ndarray  # field of the brain chi alone
    total_field_ppm: np.ndarray  # incl. background (air/skull)
    sources: dict                # name -> bool mask of each inclusion


def simulate_head(shape=(64, 64, 48), voxel_mm=(1.5, 1.5, 2.0), tilt_deg=0.0, te_s=(4e-3, 8e-3, 12e-3,
                  16e-3, 20e-3), b0_tesla=3.0, snr=100.0, seed=0, background=True, texture=0.0):
    """Simulated multi-echo GRE on an oblique (``tilt_deg`` about R then A) grid. Returns
    ``SimulatedGRE``; chi truth has spheres (0.1-0.2 ppm), a vein-like cylinder (0.4 ppm) and WM-like
    -0.03 ppm half."""
    rng = np.random.default_rng(seed)
    vox = np.asarray(voxel_mm, float)
    c = (np.array(shape) - 1) / 2.0
    g = [(np.arange(n) - cc) * v for n, cc, v in zip(shape, c, vox)]
    x, y, z = np.meshgrid(*g, indexing="ij")
    ext = (np.array(shape) - 1) * vox / 2
    r_brain = ((x / (0.72 * ext[0])) ** 2 + (y / (0.72 * ext[1])) ** 2 + (z / (0.72 * ext[2])) ** 2)
    brain = r_brain <= 1
    skull = (r_brain > 1.04) & (r_brain <= 1.25)
    scalp = (r_brain > 1.25) & (r_brain <= 1.5)
    chi = np.zeros(shape, np.float32)
    chi[brain & (x > 0)] = -0.03
    sources = {}
    rad = 0.12 * ext.min()
    for name, pos, val in (("sphere_a", (-0.3, 0.2, 0.0), 0.2), ("sphere_b", (0.3, -0.2, 0.1), 0.1),
                           ("sphere_c", (0.0, 0.35, -0.2), 0.15)):
        s = ((x - pos[0] * ext[0]) ** 2 + (y - pos[1] * ext[1]) ** 2 + (z - pos[2] * ext[2]) ** 2) <= rad ** 2
        chi[s] = val
        sources[name] = s
    vein = (((x + 0.05 * ext[0]) ** 2 + (z - 0.1 * ext[2]) ** 2) <= (0.04 * ext.min() + 1) ** 2) & brain
    chi[vein] = 0.4
    sources["vein"] = vein
    if texture > 0:
        from scipy import ndimage
        tex = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.5)
        chi += np.float32(texture) * tex / tex.std() * brain
    chi = np.where(brain, chi - chi[brain].mean(), 0).astype(np.float32)
    direction = rotation_matrix((tilt_deg, tilt_deg * 0.5, 0.0))
    ras_from_ijk = ras_from_ijk_matrix(vox, direction, -(direction * vox) @ c)
    b0_dir = b0_dir_from_geometry(ras_from_ijk)
    local = forward_field(chi, vox, b0_dir)
    total = local.copy()
    if background:
        from scipy import ndimage
        bg_chi = np.where(r_brain > 1.5, 9.0, np.where(skull, -2.0, 0.0)).astype(np.float32)
        bg_chi = ndimage.gaussian_filter(bg_chi, 1.0)  # partial volume at the air boundary
        bg_chi[brain] = 0.0
        total = total + forward_field(bg_chi, vox, b0_dir)
    te = np.asarray(te_s, float)
    r2s = np.where(brain, 20.0, np.where(scalp, 30.0, 0.0))
    r2s = np.where(vein, 60.0, r2s)
    m0 = np.where(brain, 1.0, np.where(scalp, 1.2, 0.0)).astype(np.float32)
    offset = 0.8 * np.sin(x / 25.0) + 0.5 * np.cos(y / 30.0 + z / 40.0)
    hz = total * 1e-6 * GAMMA_HZ_PER_T * b0_tesla
    mags, phases = [], []
    for t in te:
        s = m0 * np.exp(-r2s * t) * np.exp(1j * (offset + 2 * np.pi * hz * t))
        s = s + (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / snr
        mags.append(np.abs(s))
        phases.append(np.angle(s))
    gre = MultiEchoGRE(np.stack(mags, 3).astype(np.float32), np.stack(phases, 3).astype(np.float32), te,
                       b0_tesla, ras_from_ijk, b0_dir, "radians", "simulate_head")
    return SimulatedGRE(gre, chi, brain, np.where(brain, local, 0).astype(np.float32),
                        total.astype(np.float32), sources)
