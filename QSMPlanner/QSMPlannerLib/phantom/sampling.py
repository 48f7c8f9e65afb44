"""Resampling of model maps (MNI space) onto any voxel grid through the patient's deformation.

A voxel (i, j, k) of a target grid maps to model-grid indices by
``idx = model_from_ijk_affine @ (i, j, k, 1) + disp(q) / h``, ``q = disp_from_ijk @ (i, j, k, 1)``:
the affine part of anatomy->MNI, plus a smooth displacement (MNI mm) stored on a coarse grid over
anatomical space, divided by the model spacing ``h`` (mm). Trilinear for continuous maps, nearest
neighbour for labels; outside the model grid the ``fill`` value is returned.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def _disp_at(disp, q0, q1, q2):
    """Trilinear displacement (3 components) at continuous disp-grid indices, clamped to the grid."""
    n0, n1, n2 = disp.shape[0], disp.shape[1], disp.shape[2]
    q0 = min(max(q0, 0.0), n0 - 1.000001)
    q1 = min(max(q1, 0.0), n1 - 1.000001)
    q2 = min(max(q2, 0.0), n2 - 1.000001)
    a0, a1, a2 = int(q0), int(q1), int(q2)
    f0, f1, f2 = q0 - a0, q1 - a1, q2 - a2
    out0 = 0.0
    out1 = 0.0
    out2 = 0.0
    for d0 in range(2):
        w0 = f0 if d0 else 1.0 - f0
        for d1 in range(2):
            w1 = f1 if d1 else 1.0 - f1
            for d2 in range(2):
                w = w0 * w1 * (f2 if d2 else 1.0 - f2)
                out0 += w * disp[a0 + d0, a1 + d1, a2 + d2, 0]
                out1 += w * disp[a0 + d0, a1 + d1, a2 + d2, 1]
                out2 += w * disp[a0 + d0, a1 + d1, a2 + d2, 2]
    return out0, out1, out2


@numba.njit(parallel=True, cache=True)
def _sample_kernel(out, src, nearest, fill, m, dq, disp, inv_h, k0, k1):
    ni, nj = out.shape[0], out.shape[1]
    s0, s1, s2 = src.shape[0], src.shape[1], src.shape[2]
    for i in numba.prange(ni):
        for j in range(nj):
            for k in range(k0, k1):
                q0 = dq[0, 0] * i + dq[0, 1] * j + dq[0, 2] * k + dq[0, 3]
                q1 = dq[1, 0] * i + dq[1, 1] * j + dq[1, 2] * k + dq[1, 3]
                q2 = dq[2, 0] * i + dq[2, 1] * j + dq[2, 2] * k + dq[2, 3]
                u0, u1, u2 = _disp_at(disp, q0, q1, q2)
                x = m[0, 0] * i + m[0, 1] * j + m[0, 2] * k + m[0, 3] + u0 * inv_h
                y = m[1, 0] * i + m[1, 1] * j + m[1, 2] * k + m[1, 3] + u1 * inv_h
                z = m[2, 0] * i + m[2, 1] * j + m[2, 2] * k + m[2, 3] + u2 * inv_h
                if nearest:
                    a, b, c = int(np.floor(x + 0.5)), int(np.floor(y + 0.5)), int(np.floor(z + 0.5))
                    if 0 <= a < s0 and 0 <= b < s1 and 0 <= c < s2:
                        out[i, j, k - k0] = src[a, b, c]
                    else:
                        out[i, j, k - k0] = fill
                    continue
                if x < 0.0 or y < 0.0 or z < 0.0 or x > s0 - 1 or y > s1 - 1 or z > s2 - 1:
                    out[i, j, k - k0] = fill
                    continue
                a = min(int(x), s0 - 2)
                b = min(int(y), s1 - 2)
                c = min(int(z), s2 - 2)
                fx, fy, fz = x - a, y - b, z - c
                v = ((1 - fx) * ((1 - fy) * ((1 - fz) * src[a, b, c] + fz * src[a, b, c + 1])
                                 + fy * ((1 - fz) * src[a, b + 1, c] + fz * src[a, b + 1, c + 1]))
                     + fx * ((1 - fy) * ((1 - fz) * src[a + 1, b, c] + fz * src[a + 1, b, c + 1])
                             + fy * ((1 - fz) * src[a + 1, b + 1, c] + fz * src[a + 1, b + 1, c + 1])))
                out[i, j, k - k0] = v


def sample_map(src: np.ndarray, shape, model_from_ijk: np.ndarray, disp_from_ijk: np.ndarray,
               disp: np.ndarray, model_spacing_mm: float, nearest: bool = False, fill=0.0,
               k_range=None) -> np.ndarray:
    """``src`` (model grid) sampled on a target grid of ``shape``; see the module docstring.

    ``model_from_ijk`` / ``disp_from_ijk``: 4x4 (or 3x4) affine maps from target voxel indices to model
    indices (without displacement) and to displacement-grid indices. ``k_range`` = (k0, k1) samples a
    slab only (the result then has k1 - k0 slices).
    """
    shape = tuple(int(s) for s in shape)
    k0, k1 = (0, shape[2]) if k_range is None else (int(k_range[0]), int(k_range[1]))
    dtype = src.dtype if nearest else np.float32
    out = np.empty((shape[0], shape[1], k1 - k0), dtype)
    src_c = np.ascontiguousarray(src if nearest else src.astype(np.float32, copy=False))
    _sample_kernel(out, src_c, bool(nearest), dtype.type(fill) if nearest else np.float32(fill),
                   np.ascontiguousarray(np.asarray(model_from_ijk, np.float64)[:3]),
                   np.ascontiguousarray(np.asarray(disp_from_ijk, np.float64)[:3]),
                   np.ascontiguousarray(disp, dtype=np.float32), 1.0 / float(model_spacing_mm), k0, k1)
    return out
