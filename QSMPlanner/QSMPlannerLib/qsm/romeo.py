"""Exact, path-based phase unwrapping by quality-guided region growing (ROMEO family).

Each edge between 6-neighbours gets a quality in 1..255 from phase coherence (1 - |wrap(dphi)|/pi)
times magnitude coherence (min/max of the two magnitudes). Starting from the best seed, the best
edge at the front is taken next (bucket priority queue) and its new voxel receives the source's
unwrapped value + wrap(difference): the result differs from the wrapped input only by 2*pi*n.
Reference: Dymerska B, Eckstein K et al., MRM 2021;85:2294 (ROMEO).
"""
from __future__ import annotations

import numpy as np
from numba import njit

N_BINS = 256


@njit(cache=True)
def _wrap(x):
    return (x + np.pi) % (2 * np.pi) - np.pi


@njit(cache=True)
def _edge_weights(phase, mag, mask):
    """uint8 weights (3, I, J, K): edge from voxel (i,j,k) to its +1 neighbour along each axis."""
    ni, nj, nk = phase.shape
    w = np.zeros((3, ni, nj, nk), np.uint8)
    for i in range(ni):
        for j in range(nj):
            for k in range(nk):
                if not mask[i, j, k]:
                    continue
                for d in range(3):
                    a, b, c = i, j, k
                    if d == 0:
                        a += 1
                    elif d == 1:
                        b += 1
                    else:
                        c += 1
                    if a >= ni or b >= nj or c >= nk or not mask[a, b, c]:
                        continue
                    pc = 1.0 - abs(_wrap(phase[a, b, c] - phase[i, j, k])) / np.pi
                    m0, m1 = mag[i, j, k], mag[a, b, c]
                    mx = max(m0, m1)
                    mc = min(m0, m1) / mx if mx > 0 else 0.0
                    q = pc * mc
                    w[d, i, j, k] = max(1, min(255, int(q * 254.0) + 1))
    return w


@njit(cache=True)
def _grow(phase, w, seeds, out, visited):
    ni, nj, nk = phase.shape
    n_edges = 0
    for d in range(3):
        for i in range(ni):
            for j in range(nj):
                for k in range(nk):
                    if w[d, i, j, k] > 0:
                        n_edges += 1
    cap = 2 * n_edges + 8
    pool_to = np.empty(cap, np.int64)
    pool_from = np.empty(cap, np.int64)
    pool_next = np.empty(cap, np.int64)
    head = np.full(256, -1, np.int64)
    n_pool = 0
    free_top = -1
    sj, sk = nj * nk, nk
    flat_phase = phase.reshape(-1)
    flat_out = out.reshape(-1)
    flat_vis = visited.reshape(-1)
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
            # push the edges of cur to unvisited neighbours
            ci = cur // sj
            cj = (cur // sk) % nj
            ck = cur % nk
            for e in range(6):
                d = e % 3
                a, b, c = ci, cj, ck
                if e < 3:
                    if d == 0:
                        a += 1
                    elif d == 1:
                        b += 1
                    else:
                        c += 1
                    if a >= ni or b >= nj or c >= nk:
                        continue
                    q = w[d, ci, cj, ck]
                else:
                    if d == 0:
                        a -= 1
                    elif d == 1:
                        b -= 1
                    else:
                        c -= 1
                    if a < 0 or b < 0 or c < 0:
                        continue
                    q = w[d, a, b, c]
                if q == 0:
                    continue
                t = a * sj + b * sk + c
                if flat_vis[t]:
                    continue
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
    # work in the bounding box of the mask
    idx = np.nonzero(m)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    p, g, mm = (np.ascontiguousarray(a[box]) for a in (phase, mag, m))
    w = _edge_weights(p, g, mm)
    score = w.sum(axis=0, dtype=np.int32)
    for d in range(3):  # add the incoming edges
        sl_dst = [slice(None)] * 3
        sl_src = [slice(None)] * 3
        sl_dst[d], sl_src[d] = slice(1, None), slice(None, -1)
        score[tuple(sl_dst)] += w[d][tuple(sl_src)]
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
    out[box] = np.where(mm, u, p[...])
    return out
