"""Background field removal: V-SHARP, RESHARP, PDF, LBV.

All take the total field (any unit, e.g. ppm), a brain mask and the voxel size (mm) and return
(local_field, eroded_mask) on the same grid; the field outside the returned mask is 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from .dipole import dipole_kernel, fast_shape, irfft3, pad_to, rfft3


def sphere_kernel(shape, voxel_mm, radius_mm) -> np.ndarray:
    """Normalised spherical mean-value kernel (image space, centred at index 0, periodic)."""
    vox = np.asarray(voxel_mm, float)
    rv = [int(np.ceil(radius_mm / v)) for v in vox]
    g = [np.arange(-r, r + 1) * v for r, v in zip(rv, vox)]
    x, y, z = np.meshgrid(*g, indexing="ij")
    ball = (x * x + y * y + z * z) <= radius_mm ** 2
    k = np.zeros(shape, np.float32)
    ii = np.nonzero(ball)
    idx = tuple((ii[a] - rv[a]) % shape[a] for a in range(3))
    k[idx] = 1.0
    return k / k.sum()


def smv_kernel_k(shape, voxel_mm, radius_mm) -> np.ndarray:
    """rfft of the spherical mean-value kernel (real, since it is symmetric)."""
    return rfft3(sphere_kernel(shape, voxel_mm, radius_mm)).real.astype(np.float32)


def default_vsharp_radii(voxel_mm) -> list:
    """Radii (mm) 18*min(voxel) down to 2*max(voxel) in steps of 2*max(voxel) (as QSM.jl)."""
    vox = np.asarray(voxel_mm, float)
    r_max, step = 18 * vox.min(), 2 * vox.max()
    radii = list(np.arange(r_max, step - 1e-6, -step))
    return radii if radii else [step]


def smv_kernel_analytic(shape, voxel_mm, radius_mm) -> np.ndarray:
    """rfft-layout spherical mean-value kernel from the continuous ball's transform,
    3 (sin x - x cos x) / x^3 with x = 2 pi |k| r (1 at k = 0)."""
    from .dipole import kspace_grid
    k0, k1, k2 = kspace_grid(shape, voxel_mm, real=True)
    x = (2 * np.pi * float(radius_mm)) * np.sqrt(k0 ** 2 + k1 ** 2 + k2 ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = 3 * (np.sin(x) - x * np.cos(x)) / x ** 3
    s[0, 0, 0] = 1.0
    return s.astype(np.float32)


def vsharp(field: np.ndarray, mask: np.ndarray, voxel_mm=(1, 1, 1), radii_mm=None,
           threshold: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """V-SHARP (Wu B et al., MRM 2012;67:137; Li W et al. 2011): variable-radius spherical mean value
    filtering, each voxel using the largest sphere (``radii_mm``, default 18*min(voxel) down to
    2*max(voxel)) that fits in the mask, then truncated-SVD deconvolution with the largest kernel in
    use (``threshold``). Works on the mask's bounding box. Returns (local_field, eroded_mask)."""
    from scipy import ndimage

    from ..volume import mask_box
    mask = np.asarray(mask, bool)
    vox = np.asarray(voxel_mm, float)
    local_full = np.zeros(mask.shape, np.float32)
    done_full = np.zeros(mask.shape, bool)
    if not mask.any():
        return local_full, done_full
    radii = sorted(radii_mm if radii_mm is not None else default_vsharp_radii(vox), reverse=True)
    box = mask_box(mask, 1)
    mb = mask[box]
    # mm to the nearest voxel outside the mask (beyond the array counts as outside)
    depth = ndimage.distance_transform_edt(np.pad(mb, 1), sampling=vox)[1:-1, 1:-1, 1:-1]
    pad = [int(np.ceil(radii[0] / v)) + 1 for v in vox]
    shape = fast_shape(mb.shape, pad)
    f, sl = pad_to(np.where(mb, field[box], 0).astype(np.float32), shape)
    ff = rfft3(f)
    hp = np.zeros(mb.shape, np.float32)
    done = np.zeros(mb.shape, bool)
    s_first = None
    for r in radii:
        new = (depth > r) & ~done
        if not new.any():
            continue
        s = smv_kernel_analytic(shape, vox, r)
        if s_first is None:  # deconvolve with the largest kernel in use
            s_first = s
        hp[new] = (f[sl] - irfft3(ff * s, shape)[sl])[new]
        done |= new
    del ff
    if s_first is None:
        return local_full, done_full
    one_minus = 1.0 - s_first
    inv = np.zeros_like(one_minus)
    ok = np.abs(one_minus) > threshold
    inv[ok] = 1.0 / one_minus[ok]
    hp_pad, _ = pad_to(hp, shape)
    local = irfft3(rfft3(hp_pad) * inv, shape)[sl]
    local_full[box] = np.where(done, local, 0)
    done_full[box] = done
    return local_full, done_full


def _cg(apply_a, b, x0=None, tol=1e-3, max_iter=200):
    """Conjugate gradients for a symmetric positive (semi)definite operator; float32 arrays.
    Returns (x, iterations)."""
    x = np.zeros_like(b) if x0 is None else x0.copy()
    r = b - apply_a(x) if x0 is not None else b.copy()
    p = r.copy()
    rs = float(np.vdot(r, r))
    b_norm = max(float(np.sqrt(np.vdot(b, b))), 1e-30)
    iterations = 0
    for _ in range(max_iter):
        iterations += 1
        if np.sqrt(rs) <= tol * b_norm:
            break
        ap = apply_a(p)
        alpha = rs / max(float(np.vdot(p, ap)), 1e-30)
        x += np.float32(alpha) * p
        r -= np.float32(alpha) * ap
        rs_new = float(np.vdot(r, r))
        p = r + np.float32(rs_new / rs) * p
        rs = rs_new
    return x, iterations


def resharp(field: np.ndarray, mask: np.ndarray, voxel_mm=(1, 1, 1), radius_mm: float | None = None,
            lam: float = 1e-2, tol: float = 1e-3, max_iter: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """RESHARP (Sun H, Wilman AH, MRM 2014;71:1151): Tikhonov-regularised SHARP,
    min_fl || M_r C (fl - f) ||^2 + lam ||fl||^2 with C = delta - S_r, M_r the mask eroded by r,
    fl supported in the mask; conjugate gradients. Radius default 4*max(voxel) mm.
    Returns (local_field, eroded_mask)."""
    mask = np.asarray(mask, bool)
    vox = np.asarray(voxel_mm, float)
    r = 4.0 * vox.max() if radius_mm is None else float(radius_mm)
    pad = [int(np.ceil(r / v)) + 1 for v in vox]
    shape = fast_shape(mask.shape, pad)
    f, sl = pad_to(np.where(mask, field, 0).astype(np.float32), shape)
    m, _ = pad_to(mask, shape)
    c = (1.0 - smv_kernel_k(shape, vox, r)).astype(np.float32)
    eroded = irfft3(rfft3(m.astype(np.float32)) * (1.0 - c), shape) > 0.999

    def conv(x):
        return irfft3(rfft3(x) * c, shape).astype(np.float32)

    def normal(x):  # M (C^T M_r C + lam) M
        return np.where(m, conv(np.where(eroded, conv(np.where(m, x, 0)), 0)), 0) + np.float32(lam) * x

    rhs = np.where(m, conv(np.where(eroded, conv(f), 0)), 0).astype(np.float32)
    local, _ = _cg(normal, rhs, tol=tol, max_iter=max_iter)
    return np.where(m, local, 0)[sl].astype(np.float32), m[sl].copy()


def _even_fast_shape(shape, pad) -> tuple:
    """``fast_shape`` rounded up to even sizes (so a 2x coarser grid covers the same box)."""
    out = []
    for n in fast_shape(shape, pad):
        while n % 2:
            n = fast_shape((n + 1,), (0,))[0]
        out.append(n)
    return tuple(out)


def _block2_mean(x):
    s = x.shape
    return x.reshape(s[0] // 2, 2, s[1] // 2, 2, s[2] // 2, 2).mean(axis=(1, 3, 5), dtype=np.float32)


def _solid_harmonics(shape, ijk, voxel_mm, order) -> np.ndarray:
    """Solid harmonics up to ``order`` (0, 1 or 2: 1, 4 or 9 rows) at the voxels ``ijk`` (index
    arrays) of a grid, in units of 100 mm about its centre: (rows, voxels) float32."""
    x, y, z = [(((np.arange(n) - (n - 1) / 2) * (v / 100.0)).astype(np.float32))[i]
               for n, v, i in zip(shape, voxel_mm, ijk)]
    rows = [1.0]
    if order >= 1:
        rows += [x, y, z]
    if order >= 2:
        rows += [x * y, x * z, y * z, x * x - y * y, 2 * z * z - x * x - y * y]
    out = np.empty((len(rows), x.size), np.float32)
    for r, v in zip(out, rows):
        r[:] = v
    return out


class _HarmonicData:
    """Weighted data term of PDF with low-order solid harmonics P as free background terms:
    ``apply(y)`` = M W (I - A G^-1 A^T) W M y (A = W P, G = A^T A), ``fit(r)``: the harmonic part
    P c of r (weighted least squares), both in the mask ``m``."""

    def __init__(self, m, w, voxel_mm, order):
        self.shape = m.shape
        ijk = np.nonzero(m)
        self.idx = np.ravel_multi_index(ijk, m.shape)
        w = w.ravel()[self.idx]
        self.w = None if np.all(w == 1) else w
        self.pt = _solid_harmonics(m.shape, ijk, voxel_mm, order)
        self.at = self.pt if self.w is None else self.pt * self.w
        self.g = (self.at @ self.at.T).astype(np.float64)

    def _coef(self, v):
        return np.linalg.solve(self.g, (self.at @ v).astype(np.float64)).astype(np.float32)

    def _scatter(self, v):
        out = np.zeros(self.shape, np.float32)
        out.ravel()[self.idx] = v
        return out

    def apply(self, y):
        v = y.ravel()[self.idx]
        if self.w is not None:
            v *= self.w
        v -= self._coef(v) @ self.at
        if self.w is not None:
            v *= self.w
        return self._scatter(v)

    def fit(self, r):
        v = r.ravel()[self.idx]
        if self.w is not None:
            v *= self.w
        return self._scatter(self._coef(v) @ self.pt)


def _pdf_solve(f, m, w2, vox, b0_dir_ijk, tol, max_iter, x0=None, harmonic_order=-1):
    """CG for the PDF normal equations on a padded grid: (background field in m, background sources
    outside m, CG iterations). With ``harmonic_order`` >= 0 the background also holds the solid
    harmonics up to that order."""
    shape = f.shape
    d = dipole_kernel(shape, vox, b0_dir_ijk)

    def dconv(x):
        return irfft3(rfft3(x) * d, shape).astype(np.float32, copy=False)

    harm = _HarmonicData(m, np.sqrt(w2), vox, harmonic_order) if harmonic_order >= 0 else None
    weigh = harm.apply if harm is not None else (lambda y: w2 * y)

    def normal(x):  # (1-M) D^T M W (I - A G^-1 A^T) W M D (1-M)
        return np.where(m, 0, dconv(weigh(dconv(np.where(m, 0, x)))))

    rhs = np.where(m, 0, dconv(weigh(f))).astype(np.float32)
    sources, iterations = _cg(normal, rhs, x0=x0, tol=tol, max_iter=max_iter)
    background = dconv(np.where(m, 0, sources))
    if harm is not None:
        background += harm.fit(np.where(m, f - background, 0))
    return background, sources, iterations


@dataclass
class PDFFit:
    local: np.ndarray        # local field on the input grid (0 outside the mask)
    mask: np.ndarray         # mask the local field is defined on (the input mask: no erosion)
    sources: np.ndarray      # fitted background sources on the padded grid (start for a refit)
    iterations: int          # full-resolution CG iterations
    coarse_iterations: int   # CG iterations of the coarse-grid start (0 if none)
    residual: np.ndarray | None = None  # with ``chi_local``: local field minus the field of chi_local


def pdf(field: np.ndarray, mask: np.ndarray, voxel_mm=(1, 1, 1), b0_dir_ijk=(0, 0, 1),
        **options) -> tuple[np.ndarray, np.ndarray]:
    """Projection onto dipole fields (see ``pdf_fit`` for the options): (local_field, mask)."""
    fit = pdf_fit(field, mask, voxel_mm, b0_dir_ijk, **options)
    return fit.local, fit.mask


def pdf_fit(field: np.ndarray, mask: np.ndarray, voxel_mm=(1, 1, 1), b0_dir_ijk=(0, 0, 1),
            weight: np.ndarray | None = None, tol: float = 1e-2, max_iter: int = 100,
            pad=None, coarse: bool = True, chi_local: np.ndarray | None = None,
            sources0: np.ndarray | None = None, harmonic_order: int = 2) -> PDFFit:
    """Projection onto dipole fields (Liu T et al., NMR Biomed 2011;24:1129): the background field is
    the field, inside the mask, of sources outside it: min_chi || W M (f - D (1-M) chi) ||^2,
    conjugate gradients on the normal equations, zero-padded grid (default 8 voxels per side: the
    harmonic terms below hold the far field that wider padding would).
    ``coarse``: first solve on a 2x coarser grid (1/8 of the voxels; sources only where a whole 2x2x2
    block is outside the mask) and start the full-resolution CG from its sources: fewer full-size
    iterations for the same tolerance.
    ``chi_local``: an estimate of the sources inside the mask (e.g. a first dipole inversion, ppm);
    their field is taken out before the background is fitted, so the outside sources no longer absorb
    the far field of deep sources near the boundary (one step of a total-field-inversion alternation).
    ``sources0``: start for the background sources (``PDFFit.sources`` of an earlier call with the same
    mask and pad, e.g. before a ``chi_local`` refit); skips the coarse start.
    ``harmonic_order`` (-1: none): the background also holds the solid harmonics up to this order
    (constant, linear, second order: the scanner's shim terms), fitted jointly with the sources. Their
    field comes from far away (shim coils, the body): sources in the padding mimic it only in part,
    and a low-order harmonic field left in the local field turns into a smooth chi error.
    Returns a ``PDFFit`` (local field, mask, background sources, iteration counts and, with
    ``chi_local``, the residual: the part of the local field that chi_local does not explain)."""
    mask = np.asarray(mask, bool)
    vox = np.asarray(voxel_mm, float)
    if pad is None:
        pad = (8, 8, 8)
    shape = _even_fast_shape(mask.shape, pad)
    f, sl = pad_to(np.where(mask, field, 0).astype(np.float32), shape)
    m, _ = pad_to(mask, shape)
    w = np.ones(mask.shape, np.float32) if weight is None else np.asarray(weight, np.float32)
    w2, _ = pad_to(np.where(mask, w * w, 0).astype(np.float32), shape)
    known = None
    if chi_local is not None:  # field of the known local sources, inside the mask
        cl, _ = pad_to(np.where(mask, chi_local, 0).astype(np.float32), shape)
        known = np.where(m, irfft3(rfft3(cl) * dipole_kernel(shape, vox, b0_dir_ijk), shape), 0)
        del cl
        f = (f - known).astype(np.float32)
    x0, coarse_iterations = None, 0
    if sources0 is not None and np.shape(sources0) == shape:
        x0 = np.where(m, 0, sources0).astype(np.float32)
    elif coarse and min(shape) >= 32:
        frac = _block2_mean(m.astype(np.float32))
        mc = frac > 0
        w2c = _block2_mean(w2)
        fc = np.where(mc, _block2_mean(f * m) / np.maximum(frac, 1e-6), 0).astype(np.float32)
        _, chi_c, coarse_iterations = _pdf_solve(fc, mc, w2c / np.maximum(frac, 1e-6), 2 * vox,
                                                 b0_dir_ijk, tol, max_iter, harmonic_order=harmonic_order)
        up = np.repeat(np.repeat(np.repeat(chi_c, 2, 0), 2, 1), 2, 2)
        x0 = np.where(m, 0, up).astype(np.float32)
    background, chi_bg, iterations = _pdf_solve(f, m, w2, vox, b0_dir_ijk, tol, max_iter, x0=x0,
                                                harmonic_order=harmonic_order)
    residual = None
    if known is not None:
        residual = np.where(m, f - background, 0)[sl].astype(np.float32)
        f += known
    local = np.where(m, f - background, 0)[sl].astype(np.float32)
    return PDFFit(local, mask.copy(), chi_bg, iterations, coarse_iterations, residual)


@numba.njit(parallel=True, cache=True, fastmath=True)
def _neg_laplacian_interior(x, interior, w, out):
    """out = -Laplacian(x) on interior voxels (0 elsewhere); x is 0 outside the interior. w = 1/h^2."""
    ni, nj, nk = x.shape
    for i in numba.prange(ni):
        for j in range(nj):
            for k in range(nk):
                if not interior[i, j, k]:
                    out[i, j, k] = 0.0
                    continue
                c = x[i, j, k]
                out[i, j, k] = (w[0] * (2 * c - x[i - 1, j, k] - x[i + 1, j, k])
                                + w[1] * (2 * c - x[i, j - 1, k] - x[i, j + 1, k])
                                + w[2] * (2 * c - x[i, j, k - 1] - x[i, j, k + 1]))


def lbv(field: np.ndarray, mask: np.ndarray, voxel_mm=(1, 1, 1), tol: float = 1e-4,
        max_iter: int = 800) -> tuple[np.ndarray, np.ndarray]:
    """Laplacian boundary value background removal (Zhou D et al., NMR Biomed 2014;27:312): the
    background field is harmonic inside the mask and equals the measured field on its boundary;
    solved by conjugate gradients on the 7-point Laplacian (anisotropic voxels), from a coarse-grid
    start. Returns (local_field, mask); the local field is 0 on the mask boundary."""
    from scipy import ndimage

    from ..volume import mask_box
    mask = np.asarray(mask, bool)
    vox = np.asarray(voxel_mm, float)
    out = np.zeros(mask.shape, np.float32)
    if not mask.any():
        return out, mask.copy()
    box = mask_box(mask, 1)
    mb = np.pad(mask[box], 1)
    fb = np.pad(np.where(mask[box], field[box], 0).astype(np.float32), 1)
    interior = ndimage.binary_erosion(mb)  # all 6 neighbours inside (the pad keeps edges out)
    boundary = mb & ~interior
    w = (1.0 / vox ** 2).astype(np.float32)
    tmp = np.empty_like(fb)

    def apply(x):
        _neg_laplacian_interior(x, interior, w, tmp)
        return tmp.copy()

    # right-hand side: the known boundary values moved over: A u = L(f_boundary) on the interior
    fbound = np.where(boundary, fb, 0).astype(np.float32)
    _neg_laplacian_interior(fbound, interior, w, tmp)
    rhs = (-tmp).astype(np.float32)
    # start: the field smoothed inside (a crude harmonic guess) keeps the iteration count down
    x0 = np.where(interior, ndimage.gaussian_filter(fb, 4.0 / vox.min()), 0).astype(np.float32)
    u, _ = _cg(apply, rhs, x0=x0, tol=tol, max_iter=max_iter)
    background = np.where(interior, u, fbound)
    local = np.where(mb, fb - background, 0)[1:-1, 1:-1, 1:-1]
    out[box] = local
    return out, mask.copy()
