"""Localizer rods in a CT as 3-D lines, in bounded time and memory on any CT.

1. Candidates, slab by slab (16 slices at a time, in the image's own dtype): small bright blobs of a
   rod's cross-section (area and extent limits) in each slice, with a partial-volume centroid (intensity
   above the local background, over the blob grown by 2 pixels) for sub-pixel positions; where a plate,
   skin or bone lies beside the blob, the background follows it (a grey opening by lines). At most
   ``max_per_slice`` per slice (the brightest) and ``max_candidates`` in all.
2. Tracks: candidates of neighbouring slices (gaps of up to 2 slices) joined when each is the other's
   nearest within the distance a rod tilted up to 70 degrees from the slice normal can move.
3. Lines: each track is fitted as a 3-D line, robustly (a deterministic MSAC start from points spread
   along the track, then iterative rejection at three robust SDs), so that blobs of a vessel, a pin or a
   crossing rod beside it fall out; what is left of a track is fitted again (a track can run from one rod onto another where they meet). Collinear pieces
   of one rod are merged and refitted.

Everything is capped (candidates per slice and in all, tracks, lines), so clutter costs time
proportional to the CT's size and never more memory than a slab's worth.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from ..errors import InputError
from ..progress import as_progress
from ..volume import Volume
from .geometry import apply

MAX_TILT_DEG = 70.0          # rods may run this far from the slice normal (diagonal 45 deg + pose + tilt)
CHUNK_SLICES = 16


@dataclass
class Candidates:
    """Rod cross-section candidates: image RAS mm centroids, their slice index, area (mm^2) and peak
    contrast above the local background (image units)."""
    ras: np.ndarray
    slice_index: np.ndarray
    area_mm2: np.ndarray
    peak: np.ndarray
    slice_axis: int
    slice_normal_ras: np.ndarray
    slice_spacing_mm: float
    n_slices: int
    threshold: float
    plane_offsets: np.ndarray = None     # n . p of each slice plane (mm), p image RAS
    capped_slices: int = 0

    def __len__(self):
        return len(self.slice_index)


@dataclass
class RodLine:
    """A straight rod-like track: inlier centroids (image RAS mm), their slices and the fitted line
    (``point`` on it, unit ``direction`` toward increasing slice index)."""
    point: np.ndarray
    direction: np.ndarray
    points: np.ndarray
    slices: np.ndarray
    rms_mm: float
    candidate_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, int))

    @property
    def t(self) -> np.ndarray:
        return (self.points - self.point) @ self.direction

    @property
    def span_mm(self) -> float:
        t = self.t
        return float(t.max() - t.min()) if len(t) else 0.0

    @property
    def ends(self) -> tuple:
        t = self.t
        return self.point + t.min() * self.direction, self.point + t.max() * self.direction

    def distance(self, p) -> np.ndarray:
        q = np.asarray(p, float) - self.point
        return np.linalg.norm(q - (q @ self.direction)[..., None] * self.direction, axis=-1)

    def at_plane(self, normal, offset) -> np.ndarray:
        """Crossing(s) of the line with the plane(s) n . p = offset (offset scalar or array)."""
        den = float(self.direction @ normal)
        t = (np.asarray(offset, float) - self.point @ normal) / den
        return self.point + np.asarray(t)[..., None] * self.direction


# ---- 1. candidates ---------------------------------------------------------------------------------
def slice_geometry(ct: Volume):
    """(slice axis, unit slice normal in RAS, slice spacing along the normal mm, in-plane axes). The
    slices are the image's axial planes (the voxel axis most along S): the rods cross them."""
    axis = int(np.argmax(np.abs(ct.direction_ras[2])))
    inplane = [a for a in range(3) if a != axis]
    cols = ct.ras_from_ijk[:3, :3]
    n = np.cross(cols[:, inplane[0]], cols[:, inplane[1]])
    n /= np.linalg.norm(n)
    if n @ cols[:, axis] < 0:
        n = -n
    return axis, n, float(abs(cols[:, axis] @ n)), inplane


def find_candidates(ct: Volume, threshold: float, polarity: str = "bright", progress=None,
                    max_per_slice: int = 200, max_candidates: int = 400000,
                    max_area_mm2: float = 60.0, max_extent_mm: float = 16.0) -> Candidates:
    """Rod cross-section candidates of ``ct`` at ``threshold`` (image units; 'dark' polarity finds
    fiducials darker than it, as in some MR boxes)."""
    from scipy import ndimage
    progress = as_progress(progress)
    data = ct.data
    if data.ndim != 3:
        raise InputError(f"expected a 3-D image, got {data.ndim}-D data", ct.name or None)
    sign = -1.0 if polarity == "dark" else 1.0
    axis, normal, dz, inplane = slice_geometry(ct)
    view = np.moveaxis(data, axis, -1)                  # (u, v, slice), a view
    cols = ct.ras_from_ijk[:3, :3]
    pix = np.array([np.linalg.norm(cols[:, inplane[0]]), np.linalg.norm(cols[:, inplane[1]])])
    pix_area = float(np.linalg.norm(np.cross(cols[:, inplane[0]], cols[:, inplane[1]])))
    min_px = max(0.4 / pix_area, 1.0)
    max_px = max_area_mm2 / pix_area
    max_u, max_v = int(np.floor(max_extent_mm / pix[0])), int(np.floor(max_extent_mm / pix[1]))
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True                                 # 8-connectivity within each slice of (slice, u, v)
    nk = view.shape[2]
    found = []
    capped = total = noisy = 0
    for k0 in range(0, nk, CHUNK_SLICES):
        k1 = min(k0 + CHUNK_SLICES, nk)
        block = view[:, :, k0:k1]
        mask = np.ascontiguousarray((block > threshold if sign > 0 else block < threshold).transpose(2, 0, 1))
        lab, n = ndimage.label(mask, structure=structure)
        del mask
        if n > 20 * max_per_slice * (k1 - k0):        # speckle at this level: nothing rod-like to find
            noisy += 1
            n = 0
        if n:
            objs = ndimage.find_objects(lab)
            ext = np.array([(o[0].start, o[1].stop - o[1].start, o[2].stop - o[2].start) for o in objs])
            area = np.bincount(lab.ravel(), minlength=n + 1)[1:]
            keep = (area >= min_px) & (area <= max_px) & (ext[:, 1] <= max_u) & (ext[:, 2] <= max_v)
            ids = np.flatnonzero(keep) + 1
            per_slice = np.bincount(ext[ids - 1, 0], minlength=k1 - k0)
            if len(ids) and per_slice.max() > max_per_slice:
                # too many: keep the strongest of each slice (intensity above the threshold, summed)
                strength = ndimage.sum_labels(sign * (np.moveaxis(block, -1, 0) - threshold), lab, ids)
                order = np.lexsort((-strength, ext[ids - 1, 0]))
                ids, ks = ids[order], ext[ids[order] - 1, 0]
                rank = np.arange(len(ids)) - np.searchsorted(ks, ks)
                capped += int((per_slice > max_per_slice).sum())
                ids = ids[rank < max_per_slice]
            rows = _blob_centroids(block, lab, objs, ids, area, sign)
            if len(rows):
                rows[:, 0] += k0
                found.append(rows)
                total += len(rows)
        del lab
        progress.update(k1 / nk, f"localizer: rods in slice {k1}/{nk}")
        if total > max_candidates or noisy > max(2, nk // CHUNK_SLICES // 2):
            break
    rows = np.concatenate(found) if found else np.zeros((0, 5))
    ijk = np.zeros((len(rows), 3))
    ijk[:, inplane[0]], ijk[:, inplane[1]], ijk[:, axis] = rows[:, 1], rows[:, 2], rows[:, 0]
    offsets = normal @ ct.ras_from_ijk[:3, 3] + np.arange(nk) * float(normal @ cols[:, axis])
    return Candidates(apply(ct.ras_from_ijk, ijk), rows[:, 0].astype(np.int64), rows[:, 3] * pix_area,
                      rows[:, 4], axis, normal, dz, nk, float(threshold), offsets, capped)


@njit(cache=True)
def _line_opening(img, length, r0, r1, c0, c1):
    """Over rows r0..r1-1 and columns c0..c1-1 of ``img``: the largest grey opening by a flat line of
    ``length`` pixels along the rows, the columns and both diagonals (per pixel, the highest minimum of
    the ``length``-pixel segments through it; segments clamped at the image border)."""
    nu, nv = img.shape
    out = np.full((r1 - r0, c1 - c0), -np.inf)
    ero = np.empty((nu, nv))
    for du, dv in ((1, 0), (0, 1), (1, 1), (1, -1)):
        for u in range(nu):                       # minimum of the segment starting at (u, v)
            for v in range(nv):
                m = np.inf
                for t in range(length):
                    m = min(m, img[min(max(u + t * du, 0), nu - 1), min(max(v + t * dv, 0), nv - 1)])
                ero[u, v] = m
        for u in range(r0, r1):                   # highest of the segments through (u, v)
            for v in range(c0, c1):
                m = -np.inf
                for s in range(length):
                    m = max(m, ero[min(max(u - s * du, 0), nu - 1), min(max(v - s * dv, 0), nv - 1)])
                out[u - r0, v - c0] = max(out[u - r0, v - c0], m)
    return out


def _blob_centroids(block, lab, objs, ids, area, sign, grow: int = 2) -> np.ndarray:
    """Rows (slice, u, v, area px, peak contrast) of the blobs ``ids`` of one slab: ``block`` (u, v,
    slice) image values, ``lab`` (slice, u, v) its in-slice labels, ``objs`` their boxes. The centroid
    weighs the intensity above the local background over the blob's box grown by ``grow`` pixels,
    leaving out pixels of other structures: partial volume gives sub-pixel positions. The background is
    the median of a frame of pixels 3-4 px outside the box, raised wherever something else lies there (a
    plate around the rod, skin or bone beside it, which would pull the centroid toward them): to the
    largest grey opening of the image by a line longer than the blob and its partial-volume rim, in four
    directions, which keeps a band or an edge of any direction and removes the rod. A blob whose grown
    box crosses the image's edge is left out: part of its section may lie outside the field of view,
    and its centroid would be pulled inward."""
    nu, nv = lab.shape[1:]
    rows = []
    for idx in ids:
        sk, su, sv = objs[idx - 1]
        if su.start < grow or sv.start < grow or su.stop > nu - grow or sv.stop > nv - grow:
            continue
        k = sk.start
        u0, u1 = max(su.start - grow - 2, 0), min(su.stop + grow + 2, nu)
        v0, v1 = max(sv.start - grow - 2, 0), min(sv.stop + grow + 2, nv)
        lw = lab[k, u0:u1, v0:v1]
        own = lw == idx
        win = sign * np.asarray(block[u0:u1, v0:v1, k], np.float64)
        other = (lw != 0) & ~own
        frame = np.ones(win.shape, bool)
        iu0, iu1 = max(su.start - u0 - grow, 0), min(su.stop - u0 + grow, win.shape[0])
        iv0, iv1 = max(sv.start - v0 - grow, 0), min(sv.stop - v0 + grow, win.shape[1])
        frame[iu0:iu1, iv0:iv1] = False
        frame &= ~other
        ring = win[frame]
        bg = float(np.median(ring)) if len(ring) else float(win.min())
        peak = float(win[own].max()) - bg
        background = bg
        if len(ring) and ring.max() - bg > 0.1 * peak:
            length = max(su.stop - su.start, sv.stop - sv.start) + 3
            U0, U1 = max(u0 + iu0 - length, 0), min(u0 + iu1 + length, nu)
            V0, V1 = max(v0 + iv0 - length, 0), min(v0 + iv1 + length, nv)
            big = sign * np.asarray(block[U0:U1, V0:V1, k], np.float64)
            opened = _line_opening(big, length, u0 + iu0 - U0, u0 + iu1 - U0, v0 + iv0 - V0, v0 + iv1 - V0)
            background = np.maximum(opened, bg)
        w = np.clip(win[iu0:iu1, iv0:iv1] - background, 0.0, None)
        w[other[iu0:iu1, iv0:iv1]] = 0.0
        total = w.sum()
        if total <= 0:
            continue
        cu = (w.sum(1) @ np.arange(u0 + iu0, u0 + iu0 + w.shape[0])) / total
        cv = (w.sum(0) @ np.arange(v0 + iv0, v0 + iv0 + w.shape[1])) / total
        rows.append((k, cu, cv, area[idx - 1], peak))
    return np.array(rows, float).reshape(-1, 5)


# ---- 2. tracks ----------------------------------------------------------------------------------------
def link_tracks(c: Candidates, max_gap: int = 2, tol_mm: float = 1.0) -> list:
    """Chains of candidate indices across slices (mutual nearest neighbours, gaps up to ``max_gap``)."""
    from scipy.spatial import cKDTree
    n = len(c)
    nxt = np.full(n, -1, np.int64)
    prv = np.full(n, -1, np.int64)
    if n == 0:
        return []
    order = np.argsort(c.slice_index, kind="stable")
    ks = c.slice_index[order]
    bounds = np.searchsorted(ks, np.arange(c.n_slices + 1))
    members = [order[bounds[k]:bounds[k + 1]] for k in range(c.n_slices)]
    tan = np.tan(np.radians(MAX_TILT_DEG))
    for gap in range(1, max_gap + 1):
        r_plane = gap * c.slice_spacing_mm * tan + tol_mm
        r3 = float(np.hypot(r_plane, gap * c.slice_spacing_mm))
        for k in range(c.n_slices - gap):
            a = members[k]
            b = members[k + gap]
            if not len(a) or not len(b):
                continue
            a = a[nxt[a] < 0]
            b = b[prv[b] < 0]
            if not len(a) or not len(b):
                continue
            pa, pb = c.ras[a], c.ras[b]
            da, ia = cKDTree(pb).query(pa, distance_upper_bound=r3)
            db, ib = cKDTree(pa).query(pb, distance_upper_bound=r3)
            for x in np.flatnonzero(np.isfinite(da)):
                y = ia[x]
                if ib[y] == x:
                    nxt[a[x]], prv[b[y]] = b[y], a[x]
    chains = []
    for head in np.flatnonzero(prv < 0):
        chain = [head]
        while nxt[chain[-1]] >= 0:
            chain.append(nxt[chain[-1]])
        chains.append(np.array(chain))
    return chains


# ---- 3. lines -------------------------------------------------------------------------------------------
def _pca_line(p):
    c = p.mean(0)
    _, _, vt = np.linalg.svd(p - c, full_matrices=False)
    return c, vt[0]


def _distances(p, c, d):
    q = p - c
    return np.linalg.norm(q - (q @ d)[:, None] * d, axis=1)


def robust_line(points, inlier_mm: float = 0.8, n_anchors: int = 32):
    """(centre, unit direction, inlier mask) of the dominant straight line through ``points`` (N, 3).
    Start: of the lines through pairs of up to ``n_anchors`` points spread evenly along the points'
    principal axis (each pair at least a quarter of that spread apart), the one with the least truncated
    squared distance sum(min(d, inlier_mm)^2) (MSAC: tight inliers beat many loose ones). Then least
    squares with iterative rejection beyond three robust SDs (0.3..1.5 mm). Deterministic: the same points
    give the same line in any order, whatever else the image holds."""
    p = np.asarray(points, float)
    n = len(p)
    if n < 3:
        c, d = _pca_line(p) if n == 2 else (p.mean(0), np.array([0.0, 0.0, 1.0]))
        return c, d, np.ones(n, bool)
    c0, axis = _pca_line(p)
    order = np.argsort((p - c0) @ axis, kind="stable")
    m = min(n, n_anchors)
    anchors = p[order[np.round(np.linspace(0, n - 1, m)).astype(int)]]
    i, j = np.triu_indices(m, k=max(1, m // 4))
    d = anchors[j] - anchors[i]
    norm = np.linalg.norm(d, axis=1)
    ok = norm > 1e-6
    i, d = i[ok], d[ok] / norm[ok, None]
    if len(i):
        q = p[None, :, :] - anchors[i][:, None, :]                      # (hypotheses, points, 3)
        dist2 = np.einsum("hnk,hnk->hn", q, q) - np.einsum("hnk,hk->hn", q, d) ** 2
        best = int(np.argmin(np.minimum(dist2, inlier_mm ** 2).sum(1)))
        c, d = anchors[i[best]], d[best]
    else:
        c, d = c0, axis
    inl = _distances(p, c, d) <= inlier_mm
    if inl.sum() < 2:
        return c, d, inl
    for _ in range(10):
        c, d = _pca_line(p[inl])
        res = _distances(p, c, d)
        sigma = 1.4826 * np.median(res[inl])
        new = res <= float(np.clip(3.0 * sigma, 0.3, 1.5))
        if new.sum() < 2 or np.array_equal(new, inl):
            break
        inl = new
    return c, d, inl


def _make_line(c: Candidates, ids, normal, inlier_mm):
    centre, d, inl = robust_line(c.ras[ids], inlier_mm)
    if d @ normal < 0:
        d = -d
    ids_in = ids[inl]
    p = c.ras[ids_in]
    res = _distances(p, centre, d) if len(p) else np.zeros(0)
    return RodLine(centre, d, p, c.slice_index[ids_in], float(np.sqrt(np.mean(res ** 2))) if len(res) else 0.0,
                   ids_in), ids[~inl]


def fit_lines(c: Candidates, chains, min_points: int = 6, min_span_mm: float = 15.0,
              max_rms_mm: float = 0.6, max_lines: int = 400, inlier_mm: float = 0.8) -> list:
    """Straight rod-like lines from the tracks ``chains`` of candidates ``c``, merged across gaps."""
    cos_max = np.cos(np.radians(MAX_TILT_DEG + 5.0))
    lines = []
    chains = sorted((ch for ch in chains if len(ch) >= min_points), key=len, reverse=True)
    for ch in chains[:4 * max_lines]:
        if np.linalg.norm(c.ras[ch[-1]] - c.ras[ch[0]]) < min_span_mm:
            continue
        rest = ch
        for _ in range(3):                      # a track may run from one rod onto another
            line, rest = _make_line(c, rest, c.slice_normal_ras, inlier_mm)
            if len(line.points) >= min_points and line.span_mm >= min_span_mm / 2:
                lines.append(line)
            if len(rest) < min_points:
                break
    lines = _merge_collinear(c, lines, inlier_mm)
    lines = [ln for ln in lines if len(ln.points) >= min_points and ln.span_mm >= min_span_mm
             and ln.rms_mm <= max_rms_mm and abs(ln.direction @ c.slice_normal_ras) >= cos_max]
    lines.sort(key=lambda ln: len(ln.points), reverse=True)
    return lines[:max_lines]


def _merge_collinear(c: Candidates, lines, inlier_mm, angle_deg: float = 3.0, dist_mm: float = 1.0):
    """Merge pieces of one rod: nearly parallel lines whose points lie on each other's line."""
    lines = sorted(lines, key=lambda ln: len(ln.points), reverse=True)
    cos_tol = np.cos(np.radians(angle_deg))
    merged = True
    while merged and len(lines) > 1:
        merged = False
        for i in range(len(lines)):
            a = lines[i]
            for j in range(i + 1, len(lines)):
                b = lines[j]
                if abs(a.direction @ b.direction) < cos_tol:
                    continue
                if np.median(a.distance(b.points)) > dist_mm or np.median(b.distance(a.points)) > 2 * dist_mm:
                    continue
                ids = np.unique(np.concatenate([a.candidate_ids, b.candidate_ids]))
                new, _ = _make_line(c, ids, c.slice_normal_ras, inlier_mm)
                if len(new.points) >= 0.9 * (len(a.points) + len(b.points)) - 2:
                    lines[i] = new
                    del lines[j]
                    merged = True
                    break
            if merged:
                break
    return lines


def find_rod_lines(ct: Volume, threshold: float, polarity: str = "bright", progress=None):
    """(lines, candidates) of ``ct`` at ``threshold``: straight rod-like tracks as ``RodLine``s."""
    progress = as_progress(progress)
    cands = find_candidates(ct, threshold, polarity, progress.sub(0.0, 0.85))
    progress.update(0.9, f"localizer: {len(cands)} rod candidates, tracking")
    lines = fit_lines(cands, link_tracks(cands))
    progress.update(1.0, f"localizer: {len(lines)} straight rod-like lines")
    return lines, cands
