"""Automatic Leksell N-localizer registration: image RAS mm -> Leksell XYZ mm.

Per slice: bright small blobs (rod cross-sections) with sub-voxel partial-volume centroids; collinear
triplets (vertical rod, diagonal, vertical rod) ~120 mm wide (wider on tilted slices) are N-localizer
hits. Brown's formula gives each diagonal point in frame space (exact on oblique slices):
f = |b - a| / |c - a|, D = D_start + f (D_end - D_start), paired with b (image RAS). Triplets are
grouped into plates (single-linkage on their midpoints); plate identities and rod orders are found by
trying every labelling and keeping the best rigid fit (a mirror labelling cannot fit a proper
rotation). The final fit uses all triplets that agree with that pose, least squares (Kabsch with the
reflection guard) with iterative rejection of points > 2 mm.

References: Brown RA, "A computerized tomography-computer graphics approach to stereotaxic
localization", J Neurosurg 1979 (N-localizer); Arun KS, Huang TS, Blostein SD, IEEE PAMI 1987 and
Umeyama S, IEEE PAMI 1991 (least-squares rigid fit, reflection guard); Fitzpatrick JM, West JB,
Maurer CR, IEEE TMI 1998 (predicted TRE from FLE and the fiducial configuration).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, ProcessingError
from ..progress import as_progress
from ..volume import Volume
from .geometry import ALL_PLATES, FRAME_CENTER_XYZ, LPS_FROM_RAS, apply
OUTLIER_MM = 2.0


# ---- rigid fit -------------------------------------------------------------------------------------
def rigid_fit(src, dst, weights=None) -> np.ndarray:
    """4x4 proper rigid transform minimising sum |T src - dst|^2 (Kabsch/Umeyama, reflection guard)."""
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, float)
    w = w / w.sum()
    cs, cd = w @ src, w @ dst
    h = (src - cs).T @ ((dst - cd) * w[:, None])
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    rot = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = cd - rot @ cs
    return m


def robust_rigid_fit(src, dst, outlier_mm: float = OUTLIER_MM, max_iter: int = 50):
    """Rigid fit with iterative rejection: drop points whose residual exceeds max(outlier_mm, half the
    worst residual), refit, until every kept residual is <= outlier_mm. Returns (4x4, inlier mask)."""
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    keep = np.ones(len(src), bool)
    m = np.eye(4)
    for _ in range(max_iter):
        if keep.sum() < 3:
            break
        m = rigid_fit(src[keep], dst[keep])
        res = np.linalg.norm(apply(m, src) - dst, axis=1)
        worst = res[keep].max()
        if worst <= outlier_mm:
            break
        keep &= res <= max(outlier_mm, 0.5 * worst)
    return m, keep


def predicted_tre_mm(fiducials, fle_rms_mm: float, target) -> float:
    """Fitzpatrick, West & Maurer (1998): <TRE^2> ~ <FLE^2>/N (1 + 1/3 sum_k d_k^2 / f_k^2), d_k the
    target's and f_k the fiducials' RMS distance from principal axis k. Same mm space for all."""
    p = np.asarray(fiducials, float)
    n = len(p)
    c = p.mean(0)
    q = p - c
    t = np.asarray(target, float) - c
    _, _, vt = np.linalg.svd(q, full_matrices=False)
    ratio = 0.0
    for axis in vt:
        f2 = np.mean(np.sum(q * q, 1) - (q @ axis) ** 2)
        d2 = t @ t - (t @ axis) ** 2
        ratio += d2 / max(f2, 1e-12)
    return float(np.sqrt(fle_rms_mm ** 2 / n * (1.0 + ratio / 3.0)))


# ---- detection -----------------------------------------------------------------------------------
@dataclass
class Triplet:
    """One N-localizer hit on one slice: centroids (image RAS mm) of the two vertical rods and the
    diagonal between them. ``first``/``second`` order is arbitrary until a plate is assigned."""
    first: np.ndarray
    diagonal: np.ndarray
    second: np.ndarray
    slice_index: int = -1

    @property
    def fraction(self) -> float:
        return float(np.linalg.norm(self.diagonal - self.first) / np.linalg.norm(self.second - self.first))

    def flipped(self) -> "Triplet":
        return Triplet(self.second, self.diagonal, self.first, self.slice_index)


def _slice_axis(vol: Volume) -> int:
    sp = vol.voxel_mm
    return int(np.argmax(sp)) if sp.max() > 1.05 * sp.min() else 2


_IN_SLICE = np.zeros((3, 3, 3), bool)
_IN_SLICE[1] = True          # 8-connectivity within each slice of a (slice, u, v) block


def _blobs_in_block(masks, view, k0, pix_area_mm2, pix_mm, min_area_mm2, max_area_mm2, max_extent_mm,
                    sign=1.0):
    """{slice: [(u, v) sub-pixel centroids]} of small blobs in ``masks`` (slice, u, v) (slices k0...).
    ``view`` (u, v, slice) gives the partial-volume weights, read only in small boxes."""
    from scipy import ndimage
    lab, n = ndimage.label(masks, structure=_IN_SLICE)
    if n == 0:
        return {}
    areas = np.bincount(lab.ravel(), minlength=n + 1)[1:] * pix_area_mm2
    out = {}
    nu, nv = masks.shape[1:]
    for idx, sl in enumerate(ndimage.find_objects(lab)):
        if sl is None or not (min_area_mm2 <= areas[idx] <= max_area_mm2):
            continue
        if max((sl[1].stop - sl[1].start) * pix_mm[0], (sl[2].stop - sl[2].start) * pix_mm[1]) > max_extent_mm:
            continue
        kk = sl[0].start
        i0, i1 = max(sl[1].start - 2, 0), min(sl[1].stop + 2, nu)
        j0, j1 = max(sl[2].start - 2, 0), min(sl[2].stop + 2, nv)
        box = sign * np.asarray(view[i0:i1, j0:j1, k0 + kk], np.float64)
        lb = lab[kk, i0:i1, j0:j1]
        border = np.concatenate([box[0], box[-1], box[:, 0], box[:, -1]])
        bg = float(np.median(border))
        w = np.where((lb == 0) | (lb == idx + 1), np.clip(box - bg, 0.0, None), 0.0)
        s = w.sum()
        if s <= 0:
            continue
        out.setdefault(kk, []).append(((w.sum(1) @ np.arange(i0, i1)) / s, (w.sum(0) @ np.arange(j0, j1)) / s))
    return out


def _triplets_in_slice(pts, width_range, collinear_mm):
    """Index triplets (a, b, c) of 3-D points with b between a and c on their line, |c - a| in range
    (the middle point closest to the line when several qualify)."""
    n = len(pts)
    if n < 3:
        return []
    d = np.linalg.norm(pts[:, None] - pts[None], axis=2)
    ia, ic = np.nonzero(np.triu((d >= width_range[0]) & (d <= width_range[1]), 1))
    if len(ia) == 0:
        return []
    v = pts[ic] - pts[ia]                                   # (P, 3)
    rel = pts[None, :, :] - pts[ia][:, None, :]             # (P, n, 3)
    t = np.einsum("pnk,pk->pn", rel, v) / np.einsum("pk,pk->p", v, v)[:, None]
    perp = np.linalg.norm(rel - t[..., None] * v[:, None, :], axis=2)
    ok = (t > 0.01) & (t < 0.99) & (perp < collinear_mm)
    ok[np.arange(len(ia)), ia] = False
    ok[np.arange(len(ia)), ic] = False
    has = ok.any(axis=1)
    mid = np.argmin(np.where(ok, perp, np.inf), axis=1)
    return [(int(a), int(m), int(c)) for a, m, c, h in zip(ia, mid, ic, has) if h]


def detect_triplets(ct: Volume, threshold=None, polarity: str = "bright", progress=None,
                    width_range_mm=(112.0, 175.0), collinear_mm: float = 1.5,
                    max_extent_mm: float = 16.0) -> list:
    """All N-localizer triplets of ``ct`` (slices along its thickest axis, or k). ``threshold`` in the
    image's units (default 400 HU for CT; for MR, a level from the intensity distribution).
    ``polarity`` 'dark' finds dark fiducials (some MR boxes)."""
    progress = as_progress(progress)
    data = np.asarray(ct.data)
    if data.ndim != 3:
        raise InputError(f"expected a 3-D CT, got {data.ndim}-D data", ct.name or None)
    sign = -1.0 if polarity == "dark" else 1.0
    thr = float(threshold if threshold is not None else _default_thresholds(ct, polarity)[0])
    axis = _slice_axis(ct)
    order = [a for a in range(3) if a != axis] + [axis]
    view = np.moveaxis(data, axis, -1)          # (u, v, slice), a view
    ras_from_ijk = ct.ras_from_ijk
    cols = ras_from_ijk[:3, :3]
    u, v = cols[:, order[0]], cols[:, order[1]]
    pix_mm = np.array([np.linalg.norm(u), np.linalg.norm(v)])
    pix_area = float(np.linalg.norm(np.cross(u, v)))
    min_area = max(0.4, 0.5 * pix_area)
    min_sep_mm = 5.0 + float(np.linalg.norm(cols[:, axis])) + float(pix_mm.max())
    triplets = []
    n_slices = view.shape[2]
    chunk = 16
    for k0 in range(0, n_slices, chunk):
        k1 = min(k0 + chunk, n_slices)
        block = view[:, :, k0:k1]
        masks = np.ascontiguousarray((block > thr if sign > 0 else block < thr).transpose(2, 0, 1))
        blobs = _blobs_in_block(masks, view, k0, pix_area, pix_mm, min_area, 60.0, max_extent_mm, sign)
        for kk, centroids in sorted(blobs.items()):
            if len(centroids) < 3:
                continue
            ij = np.asarray(centroids, float)
            ijk = np.zeros((len(ij), 3))
            ijk[:, order[0]], ijk[:, order[1]], ijk[:, axis] = ij[:, 0], ij[:, 1], k0 + kk
            ras = apply(ras_from_ijk, ijk)
            for a, b, c in _triplets_in_slice(ras, width_range_mm, collinear_mm):
                # near a rod end the diagonal's blob touches a vertical rod's: biased centroids
                if min(np.linalg.norm(ras[b] - ras[a]), np.linalg.norm(ras[c] - ras[b])) < min_sep_mm:
                    continue
                triplets.append(Triplet(ras[a], ras[b], ras[c], int(k0 + kk)))
        progress.update(k1 / n_slices, f"localizer: slice {k1}/{n_slices}")
    return triplets


def _cluster_triplets(triplets, link_mm: float = 15.0):
    """Single-linkage clusters of triplets by their midpoints; each cluster's rods ordered alike."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree
    if not triplets:
        return []
    mids = np.array([(t.first + t.second) / 2 for t in triplets])
    pairs = cKDTree(mids).query_pairs(link_mm, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(mids),) * 2)
    _, labels = connected_components(graph, directed=False)
    clusters = []
    for lab in np.unique(labels):
        members = [triplets[i] for i in np.nonzero(labels == lab)[0]]
        ref = members[0].second - members[0].first
        members = [t if (t.second - t.first) @ ref > 0 else t.flipped() for t in members]
        widths = np.array([np.linalg.norm(t.second - t.first) for t in members])
        med = np.median(widths)
        members = [t for t, w in zip(members, widths) if abs(w - med) < 4.0]
        clusters.append(members)
    clusters.sort(key=len, reverse=True)
    return clusters


def _frame_point(plate, fraction):
    a, b = (np.asarray(p, float) for p in plate.diagonal)
    return a + fraction * (b - a)


def _pairs(assigned):
    """(image RAS diagonal points, frame XYZ points, plate names) from [(triplet, plate_name)]."""
    ras = np.array([t.diagonal for t, _ in assigned])
    xyz = np.array([_frame_point(ALL_PLATES[p], t.fraction) for t, p in assigned])
    return ras, xyz, [p for _, p in assigned]


def _truncated_cost(m, ras, xyz, cap=5.0):
    r = np.linalg.norm(apply(m, ras) - xyz, axis=1)
    return float(np.mean(np.minimum(r, cap) ** 2))


def _arrays(triplets):
    """(first, diagonal, second) image RAS arrays (n, 3) and fractions (n,)."""
    a = np.array([t.first for t in triplets]).reshape(-1, 3)
    b = np.array([t.diagonal for t in triplets]).reshape(-1, 3)
    c = np.array([t.second for t in triplets]).reshape(-1, 3)
    f = np.linalg.norm(b - a, axis=1) / np.linalg.norm(c - a, axis=1)
    return a, b, c, f


def _frame_points(plate, fractions):
    s, e = (np.asarray(p, float) for p in plate.diagonal)
    return s + np.asarray(fractions, float)[:, None] * (e - s)


def _best_labelling(clusters, plate_sets=(("right", "left", "anterior"), ("right", "left", "posterior"))):
    """Try every assignment of the largest clusters to plates and every rod order; best pose."""
    best = (np.inf, None)
    cand = [_arrays(c) for c in clusters[:4]]
    for plates, chosen in ((ps, ch) for ps in plate_sets
                           for ch in itertools.permutations(range(len(cand)), len(ps))):
        for flips in itertools.product((False, True), repeat=len(plates)):
            ras = np.concatenate([cand[ci][1] for ci in chosen])
            xyz = np.concatenate([_frame_points(ALL_PLATES[p], 1.0 - cand[ci][3] if flip else cand[ci][3])
                                  for ci, p, flip in zip(chosen, plates, flips)])
            m, _ = robust_rigid_fit(ras, xyz)
            cost = _truncated_cost(m, ras, xyz)
            if cost < best[0]:
                best = (cost, m)
    return best[1]


def _rod_distance(points_xyz, rod):
    r0, r1 = (np.asarray(p, float) for p in rod)
    axis = (r1 - r0) / np.linalg.norm(r1 - r0)
    q = points_xyz - r0
    return np.linalg.norm(q - (q @ axis)[:, None] * axis, axis=1)


def _assign_all(triplets, m, outlier_mm=OUTLIER_MM, plates=tuple(ALL_PLATES)):
    """Each triplet to the plate and rod order that agree with pose ``m`` (RAS -> XYZ), if any:
    diagonal point within ``outlier_mm`` and both rod centroids within ``outlier_mm`` of their rods."""
    if not triplets:
        return []
    a, b, c, f = _arrays(triplets)
    a_x, b_x, c_x = apply(m, a), apply(m, b), apply(m, c)
    n = len(triplets)
    best_d = np.full(n, np.inf)
    best_k = np.full(n, -1)
    options = [(name, flip) for name in plates for flip in (False, True)]
    for k, (name, flip) in enumerate(options):
        plate = ALL_PLATES[name]
        first, second, frac = (c_x, a_x, 1.0 - f) if flip else (a_x, c_x, f)
        d = np.linalg.norm(b_x - _frame_points(plate, frac), axis=1)
        ok = (d <= outlier_mm) & (_rod_distance(first, plate.first) <= outlier_mm) \
            & (_rod_distance(second, plate.second) <= outlier_mm) & (d < best_d)
        best_d[ok], best_k[ok] = d[ok], k
    out = []
    for t, k in zip(triplets, best_k):
        if k >= 0:
            name, flip = options[k]
            out.append((t.flipped() if flip else t, name))
    return out


# ---- result ----------------------------------------------------------------------------------------
@dataclass
class FrameRegistration:
    """Leksell frame pose. ``xyz_from_ras`` (4x4) maps image RAS mm to Leksell XYZ mm. FRE values are
    RMS mm over the diagonal fiducials kept; ``image_points_ras``/``frame_points_xyz`` are those pairs."""
    xyz_from_ras: np.ndarray
    fre_mm: float
    fre_per_plate: dict
    n_points: int
    n_rejected: int
    points_per_plate: dict
    image_points_ras: np.ndarray
    frame_points_xyz: np.ndarray
    plate_of_point: list
    method: str = "automatic"
    slice_axis: int = 2
    threshold: float | None = None
    warnings: list = field(default_factory=list)
    box_measured: dict = field(default_factory=dict)

    @property
    def ras_from_xyz(self) -> np.ndarray:
        return np.linalg.inv(self.xyz_from_ras)

    @property
    def plates_found(self) -> list:
        return sorted(p for p, n in self.points_per_plate.items() if n > 0)

    @property
    def fle_mm(self) -> float:
        """Fiducial localisation error estimated from the FRE: <FRE^2> ~ (1 - 2/N) <FLE^2>."""
        n = max(self.n_points, 3)
        return float(self.fre_mm / np.sqrt(max(1.0 - 2.0 / n, 1e-6)))

    def predicted_tre_mm(self, target_ras=None, target_xyz=None) -> float:
        """Predicted TRE (mm) at a target (image RAS, or Leksell XYZ; default the frame centre)."""
        if target_xyz is None:
            target_xyz = FRAME_CENTER_XYZ if target_ras is None else apply(self.xyz_from_ras, target_ras)
        return predicted_tre_mm(self.frame_points_xyz, self.fle_mm, target_xyz)

    def to_dict(self, target_ras=None) -> dict:
        d = {
            "system": "Leksell G",
            "xyz_from_ras": np.asarray(self.xyz_from_ras).tolist(),
            "xyz_from_ras_note": "4x4 mapping image (CT) RAS mm to Leksell XYZ mm "
                                 "(+X patient's left, +Y anterior, +Z inferior, centre 100/100/100)",
            "ras_from_xyz": self.ras_from_xyz.tolist(),
            "xyz_from_lps": (np.asarray(self.xyz_from_ras) @ LPS_FROM_RAS).tolist(),
            "xyz_from_lps_note": "the same pose for DICOM patient coordinates (LPS mm, L = -R, P = -A)",
            "method": self.method,
            "fre_mm": float(self.fre_mm),
            "fre_per_plate_mm": {k: float(v) for k, v in self.fre_per_plate.items()},
            "fle_estimate_mm": self.fle_mm,
            "n_points": int(self.n_points),
            "n_rejected": int(self.n_rejected),
            "points_per_plate": {k: int(v) for k, v in self.points_per_plate.items()},
            "plates_found": self.plates_found,
            "slice_axis": int(self.slice_axis),
            "threshold": None if self.threshold is None else float(self.threshold),
            "predicted_tre_mm_at_frame_centre": self.predicted_tre_mm(target_xyz=FRAME_CENTER_XYZ),
            "box_measured_mm": self.box_measured,
            "warnings": list(self.warnings),
        }
        if target_ras is not None:
            t = np.asarray(target_ras, float)
            d["target"] = {"RAS_mm": [float(x) for x in t],
                           "LeksellXYZ_mm": [float(x) for x in apply(self.xyz_from_ras, t)],
                           "predicted_tre_mm": self.predicted_tre_mm(target_ras=t)}
        return d


def _result(assigned, m_init, method, min_plates=3, max_fre_mm=1.5, **extra) -> FrameRegistration:
    ras, xyz, names = _pairs(assigned)
    m, keep = robust_rigid_fit(ras, xyz)
    res = np.linalg.norm(apply(m, ras) - xyz, axis=1)
    names_kept = [n for n, k in zip(names, keep) if k]
    per_plate_n = {p: int(sum(1 for n in names_kept if n == p)) for p in ALL_PLATES}
    per_plate_n = {p: n for p, n in per_plate_n.items() if n > 0 or p != "posterior"}
    fre_pp = {}
    for p in per_plate_n:
        sel = np.array([k and n == p for n, k in zip(names, keep)])
        if sel.any():
            fre_pp[p] = float(np.sqrt(np.mean(res[sel] ** 2)))
    plates_ok = [p for p, n in per_plate_n.items() if n >= 3]
    if len(plates_ok) < min_plates:
        raise ProcessingError(
            f"Leksell localizer: only {len(plates_ok)} plate(s) found ({', '.join(plates_ok) or 'none'}); "
            f"at least {min_plates} are needed to fix the frame pose")
    fre = float(np.sqrt(np.mean(res[keep] ** 2)))
    reg = FrameRegistration(m, fre, fre_pp, int(keep.sum()), int((~keep).sum()), per_plate_n,
                            ras[keep], xyz[keep], names_kept, method=method, **extra)
    reg.box_measured = _measure_box([t for (t, _), k in zip(assigned, keep) if k], names_kept, m)
    if fre > max_fre_mm:
        raise ProcessingError(f"Leksell localizer fit is poor: FRE {fre:.2f} mm > {max_fre_mm} mm "
                              f"over {reg.n_points} points")
    sep = reg.box_measured.get("lateral_plate_separation")
    spacing = [v["rod_spacing"] for k, v in reg.box_measured.items() if isinstance(v, dict) and "rod_spacing" in v
               and k != "nominal"]
    if (sep is not None and abs(sep - 190.0) > 1.5) or any(abs(x - 120.0) > 1.5 for x in spacing):
        reg.warnings.append("the localizer box measures differently from the Leksell G model (plates "
                            f"{sep if sep is None else round(sep, 2)} mm apart, rods "
                            f"{', '.join(f'{x:.2f}' for x in spacing)} mm apart; nominal 190 / 120): "
                            "check the box type and the image's voxel size")
    if fre > 0.7:
        reg.warnings.append(f"FRE {fre:.2f} mm is high for a Leksell localizer (about 0.35 mm expected)")
    if reg.n_rejected > 0.2 * (reg.n_points + reg.n_rejected):
        reg.warnings.append(f"{reg.n_rejected} of {reg.n_points + reg.n_rejected} fiducials rejected")
    return reg


def _measure_box(triplets, names, m) -> dict:
    """Box dimensions seen through the fitted pose (Leksell XYZ mm), against the nominal model: the
    plates' positions, the lateral plates' separation (nominal 190) and each plate's rod spacing
    (nominal 120). Real boxes differ by tenths of a mm; millimetres mean a wrong model or pose."""
    out = {}
    for plate in sorted(set(names)):
        sel = [t for t, n in zip(triplets, names) if n == plate]
        a = apply(m, np.array([t.first for t in sel]))
        c = apply(m, np.array([t.second for t in sel]))
        lateral = plate in ("right", "left")
        plane_axis, spacing_axis = (0, 1) if lateral else (1, 0)
        out[plate] = {
            ("X" if lateral else "Y"): float(np.mean(np.r_[a[:, plane_axis], c[:, plane_axis]])),
            "rod_spacing": float(np.mean(np.abs(c[:, spacing_axis] - a[:, spacing_axis]))),
        }
    if "right" in out and "left" in out:
        out["lateral_plate_separation"] = out["left"]["X"] - out["right"]["X"]
    out["nominal"] = {"right X": 5.0, "left X": 195.0, "anterior Y": 215.0, "posterior Y": -15.0,
                      "lateral_plate_separation": 190.0, "rod_spacing": 120.0}
    return out


def fit_triplets(triplets, max_fre_mm: float = 1.5, **extra) -> FrameRegistration:
    """Frame pose from unlabelled triplets (any plate, any rod order): cluster, label, fit."""
    if len(triplets) < 9:
        raise ProcessingError(f"Leksell localizer not found: {len(triplets)} N-localizer hits "
                              f"(rods on slices); at least 9 are needed")
    clusters = [c for c in _cluster_triplets(triplets) if len(c) >= 3]
    if len(clusters) < 3:
        raise ProcessingError(f"Leksell localizer not found: {len(clusters)} plate(s) seen, 3 needed "
                              f"(left, right and anterior N-localizers)")
    m0 = _best_labelling(clusters)
    assigned = _assign_all(triplets, m0)
    if len(assigned) < 9:
        raise ProcessingError("Leksell localizer not found: the rod triplets do not fit the box geometry")
    m1, _ = robust_rigid_fit(*_pairs(assigned)[:2])
    assigned = _assign_all(triplets, m1)       # second pass with the refined pose
    return _result(assigned, m1, extra.pop("method", "automatic"), max_fre_mm=max_fre_mm, **extra)


def _default_thresholds(ct: Volume, polarity: str) -> list:
    """Thresholds to try, best guess first: 400 HU (then 250, 700, 1000) for a CT; then (first for
    other images, e.g. MR boxes) fractions of the range between the median and the 99.99th
    percentile."""
    sign = -1.0 if polarity == "dark" else 1.0
    sample = sign * np.asarray(ct.data[::3, ::3, ::3], np.float32)
    lo, hi = np.percentile(sample, [50.0, 99.99])
    relative = [float(sign * (lo + f * (hi - lo))) for f in (0.4, 0.25, 0.55, 0.7)]
    if polarity == "bright" and ct.meta.get("modality", "CT") == "CT":
        return [400.0, 250.0, 700.0, 1000.0] + relative
    return relative


def register_frame(ct: Volume, progress=None, threshold=None, polarity: str = "bright",
                   max_fre_mm: float = 1.5) -> FrameRegistration:
    """Register the Leksell G N-localizer in ``ct`` (a CT in HU, or an MR localizer with
    ``polarity`` 'bright'/'dark'): returns the pose ``xyz_from_ras`` (image RAS mm -> Leksell XYZ
    mm) with its FRE. ``threshold`` (image units) separates rods from their surroundings; by default
    several levels are tried until the localizer is found. Raises ``ProcessingError`` if fewer than
    three plates are found or the fit is poor (FRE > ``max_fre_mm``)."""
    if polarity not in ("bright", "dark"):
        raise InputError(f"polarity must be 'bright' or 'dark', not {polarity!r}")
    progress = as_progress(progress)
    levels = [float(threshold)] if threshold is not None else _default_thresholds(ct, polarity)
    error = None
    for n, level in enumerate(levels):
        part = progress.sub(n / len(levels), (n + 1) / len(levels)) if n else progress.sub(0.0, 0.9)
        triplets = detect_triplets(ct, threshold=level, polarity=polarity, progress=part.sub(0.0, 0.95))
        part.update(0.97, "localizer: fitting the frame pose")
        try:
            reg = fit_triplets(triplets, max_fre_mm=max_fre_mm, slice_axis=_slice_axis(ct), threshold=level)
        except ProcessingError as exc:
            error = exc if error is None else error
            continue
        if n:
            reg.warnings.append(f"rods found at threshold {level:g} (the default level failed: {error})")
        progress.update(1.0, f"localizer: FRE {reg.fre_mm:.2f} mm over {reg.n_points} points")
        return reg
    raise error


def register_frame_manual(clicks, max_fre_mm: float = 1.5) -> FrameRegistration:
    """Manual fallback: ``clicks`` = {plate: [(first_rod, diagonal, second_rod), ...]} with rod
    centroids clicked on a few slices (image RAS mm). Plates: right, left, anterior (posterior for
    MR boxes). ``first_rod`` is the posterior rod (Y = 40) on lateral plates and the patient's right
    rod (X = 40) on the anterior/posterior plates."""
    assigned = []
    for plate, rows in clicks.items():
        if plate not in ALL_PLATES:
            raise InputError(f"unknown localizer plate {plate!r}; expected one of {', '.join(ALL_PLATES)}")
        for a, b, c in rows:
            assigned.append((Triplet(np.asarray(a, float), np.asarray(b, float), np.asarray(c, float)),
                             plate))
    if len(assigned) < 3:
        raise InputError("at least three clicked slices (rod triplets) are needed")
    return _result(assigned, None, "manual", max_fre_mm=max_fre_mm)


_CLICK_LABEL = None


def clicks_from_points(points: dict) -> dict:
    """Group named points (image RAS mm) labelled '<plate> <slice> <rod>' (e.g. 'right 1 first',
    'right_1_diagonal', 'right-1-second'; plates right/left/anterior/posterior, rods first/diagonal/
    second) into ``register_frame_manual``'s {plate: [(first, diagonal, second), ...]}."""
    import re
    global _CLICK_LABEL
    if _CLICK_LABEL is None:
        _CLICK_LABEL = re.compile(r"^\s*(right|left|anterior|posterior)[\s_:\-]*([0-9A-Za-z]+)[\s_:\-]+"
                                  r"(first|diagonal|second)\s*$", re.IGNORECASE)
    groups, bad = {}, []
    for label, p in points.items():
        m = _CLICK_LABEL.match(str(label))
        if not m:
            bad.append(str(label))
            continue
        plate, slice_id, rod = m.group(1).lower(), m.group(2), m.group(3).lower()
        groups.setdefault((plate, slice_id), {})[rod] = np.asarray(p, float)
    if bad:
        raise InputError(f"point labels not of the form '<plate> <slice> <first|diagonal|second>': "
                         f"{', '.join(bad[:5])}")
    clicks = {}
    for (plate, slice_id), rods in sorted(groups.items()):
        missing = [r for r in ("first", "diagonal", "second") if r not in rods]
        if missing:
            raise InputError(f"{plate} slice {slice_id}: rod(s) {', '.join(missing)} not clicked")
        clicks.setdefault(plate, []).append((rods["first"], rods["diagonal"], rods["second"]))
    return clicks
