"""Exact, path-based phase unwrapping by quality-guided region growing (ROMEO family).

Each edge between 6-neighbours gets a quality in 1..255 from phase coherence (1 - |wrap(dphi)|/pi)
times magnitude coherence (min/max of the two magnitudes). Starting from the best seed, the best
edge at the front is taken next (bucket priority queue) and its new voxel receives the source's
unwrapped value + wrap(difference): the result differs from the wrapped input only by 2*pi*n.
Reference: Dymerska B, Eckstein K et al., MRM 2021;85:2294 (ROMEO).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..volume import mask_box

N_BINS = 256


@njit(cache=True)
def _wrap(x):
    return (x + np.pi) % (2 * np.pi) - np.pi


@njit(cache=True)
def _quality(p0, p1, m0, m1):
    """Edge weight 1..255: phase coherence times magnitude coherence."""
    pc = 1.0 - abs(_wrap(p1 - p0)) / np.pi
    mx = max(m0, m1)
    mc = min(m0, m1) / mx if mx > 0 else 0.0
    return max(1, min(255, int(pc * mc * 254.0) + 1))


@njit(parallel=True, cache=True)
def _edge_weights(phase, mag, mask):
    """uint8 weights (3, I, J, K): edge from voxel (i,j,k) to its +1 neighbour along each axis."""
    ni, nj, nk = phase.shape
    w = np.zeros((3, ni, nj, nk), np.uint8)
    for i in prange(ni):
        for j in range(nj):
            for k in range(nk):
                if not mask[i, j, k]:
                    continue
                if i + 1 < ni and mask[i + 1, j, k]:
                    w[0, i, j, k] = _quality(phase[i, j, k], phase[i + 1, j, k], mag[i, j, k], mag[i + 1, j, k])
                if j + 1 < nj and mask[i, j + 1, k]:
                    w[1, i, j, k] = _quality(phase[i, j, k], phase[i, j + 1, k], mag[i, j, k], mag[i, j + 1, k])
                if k + 1 < nk and mask[i, j, k + 1]:
                    w[2, i, j, k] = _quality(phase[i, j, k], phase[i, j, k + 1], mag[i, j, k], mag[i, j, k + 1])
    return w


@njit(parallel=True, cache=True)
def _voxel_scores(w):
    """Sum of the weights of the (up to 6) edges of every voxel."""
    _, ni, nj, nk = w.shape
    score = np.empty((ni, nj, nk), np.int32)
    for i in prange(ni):
        for j in range(nj):
            for k in range(nk):
                s = np.int32(w[0, i, j, k]) + w[1, i, j, k] + w[2, i, j, k]
                if i > 0:
                    s += w[0, i - 1, j, k]
                if j > 0:
                    s += w[1, i, j - 1, k]
                if k > 0:
                    s += w[2, i, j, k - 1]
                score[i, j, k] = s
    return score


@njit(cache=True)
def _grow(phase, w, seeds, out, visited):
    """Region growing on a grid whose border voxels have no edges (weights 0), so neighbours need no
    bounds checks. Edges wait in one LIFO list per weight (int32 pool with a free list). An edge weaker
    than one already waiting for the same voxel is not queued: the stronger one is taken first."""
    ni, nj, nk = phase.shape
    strides = (nj * nk, nk, 1)
    cap = 3 * phase.size + 8
    pool_to = np.empty(cap, np.int32)
    pool_from = np.empty(cap, np.int32)
    pool_next = np.empty(cap, np.int32)
    head = np.full(256, -1, np.int32)
    n_pool = 0
    free_top = -1
    flat_phase = phase.reshape(-1)
    flat_out = out.reshape(-1)
    flat_vis = visited.reshape(-1)
    flat_w = w.reshape(3, -1)
    best_queued = np.zeros(phase.size, np.uint8)
    n_done = 0
    for s in seeds:
        if flat_vis[s]:
            continue
        flat_out[s] = flat_phase[s]
        flat_vis[s] = True
        top = 0
        n_done += 1
        cur = s
        while True:
            # push the edges of cur to unvisited neighbours (+i, +j, +k, -i, -j, -k)
            for e in range(6):
                d = e % 3
                if e < 3:
                    t = cur + strides[d]
                    q = flat_w[d, cur]
                else:
                    t = cur - strides[d]
                    q = flat_w[d, t]
                if q == 0 or flat_vis[t] or q < best_queued[t]:
                    continue
                best_queued[t] = q
                if free_top >= 0:
                    p = free_top
                    free_top = pool_next[p]
                else:
                    p = n_pool
                    n_pool += 1
                pool_to[p] = t
                pool_from[p] = cur
                pool_next[p] = head[q]
                head[q] = p
                if q > top:
                    top = q
            # pop the best edge to an unvisited voxel
            found = False
            while top > 0:
                p = head[top]
                if p < 0:
                    top -= 1
                    continue
                head[top] = pool_next[p]
                t = pool_to[p]
                f = pool_from[p]
                pool_next[p] = free_top
                free_top = p
                if flat_vis[t]:
                    continue
                flat_out[t] = flat_out[f] + _wrap(flat_phase[t] - flat_out[f])
                flat_vis[t] = True
                n_done += 1
                cur = t
                found = True
                break
            if not found:
                break
    return n_done


@njit(cache=True)
def _best_per_label(lab, score, n):
    """Flat index of the highest ``score`` in each label 1..n (one pass)."""
    best = np.full(n, -1, np.int64)
    best_score = np.full(n, -1, np.int64)
    for v in range(lab.size):
        lv = lab[v]
        if lv > 0 and score[v] > best_score[lv - 1]:
            best_score[lv - 1] = score[v]
            best[lv - 1] = v
    return best


def quality_unwrap(phase_rad: np.ndarray, magnitude: np.ndarray | None = None, mask: np.ndarray | None = None,
                   voxel_mm=(1, 1, 1)) -> np.ndarray:
    """Unwrapped phase (rad, float32) of a 3-D wrapped phase, exact up to 2*pi*n per voxel.

    Region growing runs inside ``mask`` (default: everything) from the seed with the best total edge
    quality near the mask centre; each connected piece of the mask is grown from its own seed and
    shifted by 2*pi*n towards the first. Voxels outside the mask keep their wrapped value.
    ``voxel_mm`` is accepted for a uniform unwrapper signature (qualities are per edge).
    """
    phase = np.ascontiguousarray(phase_rad, dtype=np.float32)
    if phase.ndim != 3:
        raise ValueError(f"quality_unwrap expects a 3-D phase, got shape {phase.shape}")
    mag = np.ones_like(phase) if magnitude is None else np.ascontiguousarray(magnitude, np.float32)
    m = np.ones(phase.shape, bool) if mask is None else np.ascontiguousarray(mask, bool)
    out = phase.copy()
    if not m.any():
        return out
    # work in the bounding box of the mask, plus a border of edge-free voxels for the region growing
    box = mask_box(m)
    inner = (slice(1, -1),) * 3
    p, g, mm = (np.pad(a[box], 1) for a in (phase, mag, m))
    if p.size >= 2 ** 31:
        raise ValueError(f"quality_unwrap: mask box of {p.size} voxels is too large")
    w = _edge_weights(p, g, mm)
    score = _voxel_scores(w)
    from scipy import ndimage
    lab, n_pieces = ndimage.label(mm)
    best = _best_per_label(lab.reshape(-1), score.reshape(-1), n_pieces)
    sizes = np.bincount(lab.ravel(), minlength=n_pieces + 1)[1:]
    order = np.argsort(-sizes)  # largest piece first
    flat_seeds = best[order].astype(np.int64)
    u = p.copy()
    visited = np.zeros(p.shape, bool)
    _grow(p, w, flat_seeds, u, visited)
    if n_pieces > 1:  # bring every piece within pi of the largest piece's mean (2*pi*n shifts)
        means = np.asarray(ndimage.mean(u, lab, np.arange(1, n_pieces + 1)))
        ref = means[order[0]]
        shift = np.concatenate([[0.0], 2 * np.pi * np.round((means - ref) / (2 * np.pi))])
        u = u - shift[lab].astype(np.float32)
    out[box] = np.where(mm, u, p)[inner]
    return out
