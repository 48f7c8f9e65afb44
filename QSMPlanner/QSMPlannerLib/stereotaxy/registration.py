"""Automatic N-localizer registration of Leksell G, CRW and BRW frames: image RAS mm -> frame.

1. Rods as 3-D lines (``detection.py``): per-slice candidates, tracks, robust line fits.
2. N-plates: two parallel lines ~120 mm (Leksell, CRW) or ~140 mm (BRW) apart with a third line in
   their plane, between them, at the diagonal's angle.
3. Frame system and labels: every assignment of the N-plates to a system's plates (and of their rod
   order) is fitted; the one whose diagonal points and parallel rods land on the model best wins
   (``system`` forces one). A mirror labelling cannot be fitted by a proper rotation.
4. Refinement: with that pose, every candidate within 2 mm of a model rod is given to it and each rod
   is refitted as a line (robustly: blobs merged with a crossing rod, vessel or pin fall out).
5. Fiducials from the lines: on every CT slice plane the three fitted lines of a plate cross at a, b, c;
   Brown's ratio f = (b - a).(c - a) / |c - a|^2 gives the diagonal's point in frame space, paired with
   b (exact on oblique slices, sub-voxel). A rigid least-squares fit of all of them (Kabsch with the
   reflection guard; points > 2 mm rejected iteratively) is the starting pose.
6. The pose on the rods (``fit_pose_to_rods``), the final pose: every rod's points, parallel rods and
   diagonals alike, put on their model rods by a robust fit of the six pose parameters. FRE, per plate
   and worst, are the diagonal fiducials' residuals under this final pose; the predicted TRE at a target
   is propagated from the fitted rods' ends off their model rods (``rod_pose_tre_mm``).

References: Brown RA, J Neurosurg 1979;50:715-720 (N-localizer); Brown RA, Cureus 2013;5(10):e142
(the N-localizer's mathematics); Arun KS, Huang TS, Blostein SD, IEEE PAMI 1987 and Umeyama S, IEEE PAMI
1991 (rigid fit, reflection guard); Fitzpatrick JM, West JB, Maurer CR, IEEE TMI 1998 (predicted TRE of
point fits); White H, Econometrica 1980;48:817-838 (heteroscedasticity-consistent covariance).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, ProcessingError
from ..progress import as_progress
from ..volume import Volume
from .detection import Candidates, RodLine, fit_lines, find_rod_lines, link_tracks, robust_line
from .frames import SYSTEMS, FrameSystem, diagonal_point, get_system
from .geometry import LPS_FROM_RAS, apply, segment_distance

OUTLIER_MM = 2.0
END_MARGIN_MM = 3.0          # diagonal points this close to a rod end are left out (blobs merge there)


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


# ---- N-plates in the image --------------------------------------------------------------------------
@dataclass
class Triplet:
    """One N-localizer crossing on one slice: rod centroids (image RAS mm) of the two parallel rods
    and of the diagonal between them (manual clicks)."""
    first: np.ndarray
    diagonal: np.ndarray
    second: np.ndarray
    slice_index: int = -1

    @property
    def fraction(self) -> float:
        c = self.second - self.first
        return float((self.diagonal - self.first) @ c / (c @ c))

    def flipped(self) -> "Triplet":
        return Triplet(self.second, self.diagonal, self.first, self.slice_index)


@dataclass
class NPlate:
    """An N seen in the image: parallel rod lines ``first``/``second`` and the ``diagonal`` line between
    them; ``width_mm`` between the parallel rods, ``height_mm`` implied by the diagonal's slope."""
    first: RodLine
    diagonal: RodLine
    second: RodLine
    width_mm: float
    height_mm: float

    def flipped(self) -> "NPlate":
        return NPlate(self.second, self.diagonal, self.first, self.width_mm, self.height_mm)


def _line_overlap(a: RodLine, b: RodLine, d):
    """[lo, hi] along unit ``d`` (through a.point) where both lines were seen."""
    ta = (np.array(a.ends) - a.point) @ d
    tb = (np.array(b.ends) - a.point) @ d
    return max(ta.min(), tb.min()), min(ta.max(), tb.max())


def find_n_plates(lines, widths_mm=(120.0, 140.0), width_tol_mm: float = 12.0, parallel_deg: float = 3.0,
                  coplanar_mm: float = 2.5, min_overlap_mm: float = 20.0, max_plates: int = 16) -> list:
    """N-shaped triplets of ``lines``: two parallel lines a ``widths_mm`` apart and a third line in
    their plane between them at 15-65 degrees to them."""
    n = len(lines)
    if n < 3:
        return []
    dirs = np.array([ln.direction for ln in lines])
    cos_par = np.cos(np.radians(parallel_deg))
    plates = []
    for i, j in itertools.combinations(range(n), 2):
        a, c = lines[i], lines[j]
        if abs(dirs[i] @ dirs[j]) < cos_par:
            continue
        d = dirs[i]
        lo, hi = _line_overlap(a, c, d)
        if hi - lo < min_overlap_mm:
            continue
        mid = a.point + 0.5 * (lo + hi) * d
        off = c.at_plane(d, mid @ d) - mid
        width = float(np.linalg.norm(off))
        if min(abs(width - w) for w in widths_mm) > width_tol_mm:
            continue
        e = off / width
        normal = np.cross(d, e)
        for k in range(n):
            if k in (i, j):
                continue
            g = lines[k]
            cosang = abs(dirs[k] @ d)
            ang = np.degrees(np.arccos(min(cosang, 1.0)))
            if not 15.0 <= ang <= 65.0:
                continue
            ends = np.array(g.ends)
            if np.abs((ends - mid) @ normal).max() > coplanar_mm:
                continue
            f = ((g.points - mid) @ e) / width
            if f.min() < -0.1 or f.max() > 1.1 or f.max() - f.min() < 0.15:
                continue
            plates.append(NPlate(a, g, c, width, width / np.tan(np.radians(ang))))
    plates.sort(key=lambda p: -(len(p.first.points) + len(p.diagonal.points) + len(p.second.points)))
    return plates[:max_plates]


def _sample_plate(plate: NPlate, normal, offsets):
    """(a, b, c) crossings (k, 3) of the plate's three lines with the planes n . p = offsets, kept where
    every line was seen (and away from the rod ends, where the diagonal meets a parallel rod)."""
    pts = []
    for ln in (plate.first, plate.diagonal, plate.second):
        p = ln.at_plane(normal, offsets)
        t0, t1 = (np.array(ln.ends) - ln.point) @ ln.direction
        t = (p - ln.point) @ ln.direction
        pts.append((p, (t >= t0 - 1e-6) & (t <= t1 + 1e-6)))
    ok = pts[0][1] & pts[1][1] & pts[2][1]
    a, b, c = pts[0][0][ok], pts[1][0][ok], pts[2][0][ok]
    ac = c - a
    f = np.einsum("ij,ij->i", b - a, ac) / np.einsum("ij,ij->i", ac, ac)
    margin = END_MARGIN_MM / max(plate.height_mm, 1.0)
    keep = (f > margin) & (f < 1.0 - margin)
    return a[keep], b[keep], c[keep], f[keep]


def _rod_distance(points, rod):
    r0, r1 = (np.asarray(p, float) for p in rod)
    axis = (r1 - r0) / np.linalg.norm(r1 - r0)
    q = points - r0
    return np.linalg.norm(q - (q @ axis)[:, None] * axis, axis=1)


def _labelling_cost(system: FrameSystem, assignment):
    """(cost mm, pose) of assigning image N-plates to model plates: RMS over the diagonal points and the
    parallel rods' crossings of their distances to the model after a rigid fit of the diagonal points."""
    src, dst, rods = [], [], []
    for name, plate, samples in assignment:
        a, b, c, f = samples
        model = system.plates[name]
        src.append(b)
        dst.append(diagonal_point(model, f))
        rods.append((a, c, model))
    src, dst = np.concatenate(src), np.concatenate(dst)
    if len(src) < 6:
        return np.inf, None
    m, _ = robust_rigid_fit(src, dst, outlier_mm=3.0, max_iter=5)
    res = [np.linalg.norm(apply(m, src) - dst, axis=1)]
    for a, c, model in rods:
        res.append(_rod_distance(apply(m, a), model.first))
        res.append(_rod_distance(apply(m, c), model.second))
    r = np.concatenate(res)
    return float(np.sqrt(np.mean(np.minimum(r, 10.0) ** 2))), m


def _rotation_deg(m) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(np.asarray(m)[:3, :3]) - 1.0) / 2.0, -1.0, 1.0))))


def label_plates(plates, systems, step_mm: float = 4.0):
    """Best labelling over every system in ``systems``, choice of three of its plates, assignment of the
    image N-plates and rod order: ((cost mm, system, [(plate name, NPlate)], frame_from_ras), {system key:
    best cost}). Labellings that fit about equally well (a symmetric localizer: the CRW box turned half
    a turn about its AP axis, the BRW ring a third of a turn about its vertical axis) are told apart by
    the image axes: the one least rotated from them (the frame upright, facing the patient's front) wins."""
    fits = []
    per_system = {}
    samples = {}
    for idx, p in enumerate(plates):
        d = p.first.direction
        lo, hi = _line_overlap(p.first, p.second, d)
        t = np.linspace(lo + 1.0, hi - 1.0, int(np.clip((hi - lo) / step_mm, 12, 40)))
        samples[idx] = _sample_plate(p, d, p.first.point @ d + t) if hi - lo > 2.0 else None
    for system in systems:
        sys_best = np.inf
        for names in itertools.combinations(system.plates, 3):
            cand = []
            for name in names:
                model = system.plates[name]
                w = float(np.linalg.norm(np.subtract(model.second[0], model.first[0])))
                ok = [i for i, p in enumerate(plates) if abs(p.width_mm - w) < 8.0
                      and abs(p.height_mm - system.rod_height_mm) < 0.2 * system.rod_height_mm
                      and samples[i] is not None and len(samples[i][0]) >= 3]
                cand.append(ok)
            for choice in itertools.product(*cand):
                if len(set(choice)) < 3:
                    continue
                used = [id(ln) for i in choice for ln in (plates[i].first, plates[i].diagonal, plates[i].second)]
                if len(set(used)) < 9:
                    continue
                for flips in itertools.product((False, True), repeat=3):
                    assignment = []
                    for name, i, flip in zip(names, choice, flips):
                        a, b, c, f = samples[i]
                        assignment.append((name, plates[i], (c, b, a, 1.0 - f) if flip else (a, b, c, f)))
                    cost, m = _labelling_cost(system, assignment)
                    if not np.isfinite(cost):
                        continue
                    sys_best = min(sys_best, cost)
                    fits.append((cost, _rotation_deg(m), system,
                                 [(name, plates[i].flipped() if flip else plates[i])
                                  for name, i, flip in zip(names, choice, flips)], m))
        per_system[system.key] = sys_best
    if not fits:
        return (np.inf, None, None, None), per_system
    best_cost = min(f[0] for f in fits)
    ties = [f for f in fits if f[0] <= best_cost + max(0.3, 0.5 * best_cost)]
    cost, _, system, labelled, m = min(ties, key=lambda f: (f[1], f[0]))
    return (cost, system, labelled, m), per_system


# ---- refinement and fiducials -----------------------------------------------------------------------
def _refit_rods(cands: Candidates, system: FrameSystem, frame_from_ras, min_points: int = 6,
                near_mm: float = 2.0, apart_mm: float = 3.5):
    """{plate: NPlate} from the candidates within ``near_mm`` of each model rod (pose
    ``frame_from_ras``) and not within ``apart_mm`` of the plate's other rods (where the diagonal meets a
    parallel rod their blobs merge), each rod refitted as a robust line; plates with a rod too sparse are
    left out."""
    q = apply(frame_from_ras, cands.ras)
    out = {}
    for name, model in system.plates.items():
        rods = []
        segs = model.rods()
        for r, rod in enumerate(segs):
            near = segment_distance(q, *rod) <= near_mm
            for other in (segs[x] for x in range(3) if x != r):
                near &= segment_distance(q, *other) >= apart_mm
            ids = np.flatnonzero(near)
            if len(ids) < min_points:
                break
            centre, d, inl = robust_line(cands.ras[ids], inlier_mm=0.8)
            ids = ids[inl]
            if len(ids) < min_points:
                break
            if d @ cands.slice_normal_ras < 0:
                d = -d
            p = cands.ras[ids]
            qq = p - centre
            res = np.linalg.norm(qq - (qq @ d)[:, None] * d, axis=1)
            rods.append(RodLine(centre, d, p, cands.slice_index[ids], float(np.sqrt(np.mean(res ** 2))), ids))
        if len(rods) == 3:
            width = float(np.linalg.norm(np.subtract(model.second[0], model.first[0])))
            out[name] = NPlate(rods[0], rods[1], rods[2], width, system.rod_height_mm)
    return out


def _raw_points(plate: NPlate, min_sep_mm: float):
    """Per-slice (a, b, c) raw centroids of a plate where all three rods have one in the same slice."""
    by = [dict(zip(ln.slices.tolist(), ln.points)) for ln in (plate.first, plate.diagonal, plate.second)]
    common = sorted(set(by[0]) & set(by[1]) & set(by[2]))
    a = np.array([by[0][k] for k in common]).reshape(-1, 3)
    b = np.array([by[1][k] for k in common]).reshape(-1, 3)
    c = np.array([by[2][k] for k in common]).reshape(-1, 3)
    if not len(a):
        return a, b, c
    far = np.minimum(np.linalg.norm(b - a, axis=1), np.linalg.norm(c - b, axis=1)) >= min_sep_mm
    return a[far], b[far], c[far]


# ---- the pose on the rods ---------------------------------------------------------------------------
ROD_LOSS_MM = 0.3            # soft-L1 scale of the rod fit: beyond it a point counts less than squared


def _across(u) -> np.ndarray:
    """(2, 3) unit vectors across the unit axis ``u`` (the two directions a distance from a rod has)."""
    e1 = np.cross(u, [1.0, 0.0, 0.0] if abs(u[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    return np.array([e1, np.cross(u, e1)])


def _rod_axes(system: FrameSystem, plates: dict):
    """[(fitted RodLine, model start, model unit axis, two unit normals of the axis)] of every rod."""
    out = []
    for name, p in plates.items():
        for ln, (a, b) in zip((p.first, p.diagonal, p.second), system.plates[name].rods()):
            u = (b - a) / np.linalg.norm(b - a)
            out.append((ln, a, u, _across(u)))
    return out


def _small_motion(x, centre) -> np.ndarray:
    """4x4 rotation by the rotation vector x[:3] (rad) about ``centre``, then translation x[3:] (mm)."""
    from scipy.spatial.transform import Rotation
    m = np.eye(4)
    m[:3, :3] = Rotation.from_rotvec(x[:3]).as_matrix()
    m[:3, 3] = centre - m[:3, :3] @ centre + x[3:]
    return m


def fit_pose_to_rods(system: FrameSystem, plates: dict, frame_from_ras, outlier_mm: float = OUTLIER_MM):
    """The pose (4x4 image RAS -> frame RAS) that puts every rod's points (``plates``: {name: NPlate},
    parallel rods and diagonals alike) on its model rod: robust least squares (soft L1, scale
    ``ROD_LOSS_MM``) of the points' distances from the model rod lines over the six pose parameters,
    from ``frame_from_ras``; points farther than ``outlier_mm`` from their rod there are left out. A rod
    bent or placed off its drawing then pulls the pose by its share of all the rods, not through the
    diagonal fiducials alone."""
    from scipy.optimize import least_squares
    pts, starts, normals = [], [], []
    for ln, a, u, nn in _rod_axes(system, plates):
        q = apply(frame_from_ras, ln.points) - a
        near = np.linalg.norm(q @ nn.T, axis=1) <= outlier_mm
        pts.append(ln.points[near])
        starts.append(np.repeat(a[None], near.sum(), 0))
        normals.append(np.repeat(nn[None], near.sum(), 0))
    pts, starts, normals = np.concatenate(pts), np.concatenate(starts), np.concatenate(normals)
    if len(pts) < 12:
        return np.asarray(frame_from_ras, float)
    q0 = apply(frame_from_ras, pts)
    centre = q0.mean(0)

    def residuals(x):
        m = _small_motion(x, centre)
        d = q0 @ m[:3, :3].T + m[:3, 3] - starts
        return np.einsum("nij,nj->ni", normals, d).ravel()

    fit = least_squares(residuals, np.zeros(6), loss="soft_l1", f_scale=ROD_LOSS_MM, x_scale=[0.01] * 3 + [1.0] * 3)
    return _small_motion(fit.x, centre) @ np.asarray(frame_from_ras, float)


def rod_pose_tre_mm(ends_frame, axes_frame, offsets_frame, target_frame) -> float:
    """Error (RMS mm) at ``target_frame`` of a pose fitted to rods whose seen ends ``ends_frame`` (k, 3)
    lie ``offsets_frame`` (k, 3) off their model rods (unit axes ``axes_frame``) under that pose:
    least-squares error propagation in which each end gives its two distances across its rod, with the
    variance each distance shows (White's heteroscedasticity-consistent estimate, scaled by n / (n - 6)
    for the six fitted parameters), so that one rod far off its model weighs on the directions only it
    and its like constrain (a diagonal: the height)."""
    ends, axes, offsets = (np.asarray(a, float) for a in (ends_frame, axes_frame, offsets_frame))
    centre = ends.mean(0)
    rows, res = [], []
    for x, u, off in zip(ends, axes, offsets):
        for e in _across(u):
            rows.append(np.r_[np.cross(x - centre, e), e])
            res.append(off @ e)
    jac, res = np.array(rows), np.array(res)
    n = len(jac)
    if n <= 6:
        return float("nan")
    bread = np.linalg.pinv(jac.T @ jac)
    cov = n / (n - 6.0) * bread @ (jac.T * res ** 2) @ jac @ bread
    y = np.asarray(target_frame, float) - centre
    skew = np.array([[0.0, -y[2], y[1]], [y[2], 0.0, -y[0]], [-y[1], y[0], 0.0]])
    a = np.hstack([-skew, np.eye(3)])          # target displacement = w x y + t
    return float(np.sqrt(max(np.trace(a @ cov @ a.T), 0.0)))


# ---- result ----------------------------------------------------------------------------------------
@dataclass
class FrameRegistration:
    """A registered frame. ``xyz_from_ras`` (4x4) maps image RAS mm to the system's native coordinates
    (Leksell XYZ; CRW/BRW LAT, AP, VERT), ``frame_from_ras`` to frame RAS (origin at the frame's
    coordinate origin). FRE values are RMS mm over the diagonal fiducials kept (from the fitted lines)
    under the final pose (fitted to every rod, not to these fiducials alone); ``image_points_ras``/
    ``frame_points_xyz`` are those pairs (native coordinates)."""
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
    system: str = "leksell"
    residuals_mm: np.ndarray = None
    raw_frame_points_xyz: np.ndarray = None     # per-slice centroid fiducials (native), for FLE and TRE
    raw_residuals_mm: np.ndarray = None
    rods: list = field(default_factory=list)     # [{"plate", "rod", "start_ras", "end_ras", "n_points", "rms_mm"}]
    system_costs_mm: dict = field(default_factory=dict)
    n_lines: int = 0
    rod_ends_frame: np.ndarray = None           # fitted rods' seen ends (frame RAS mm, final pose), for TRE
    rod_axes_frame: np.ndarray = None           # their model rods' unit axes
    rod_offsets_frame: np.ndarray = None        # and their offsets across the model rods

    @property
    def frame_system(self) -> FrameSystem:
        return get_system(self.system)

    @property
    def ras_from_xyz(self) -> np.ndarray:
        return np.linalg.inv(self.xyz_from_ras)

    @property
    def frame_from_ras(self) -> np.ndarray:
        """4x4 image RAS mm -> frame RAS mm (RAS axes of the frame, origin at its coordinate origin)."""
        return self.frame_system.frameras_from_native @ np.asarray(self.xyz_from_ras, float)

    @property
    def image_from_frame(self) -> np.ndarray:
        """4x4 frame RAS mm -> image RAS mm: the frame's pose in the image (a Slicer transform node)."""
        return np.linalg.inv(self.frame_from_ras)

    @property
    def plates_found(self) -> list:
        return sorted(p for p, n in self.points_per_plate.items() if n > 0)

    @property
    def fle_mm(self) -> float:
        """Fiducial localisation error: RMS residual of the per-slice centroid fiducials under the pose
        (or, without them, from the FRE: <FRE^2> ~ (1 - 2/N) <FLE^2>)."""
        if self.raw_residuals_mm is not None and len(self.raw_residuals_mm) >= 3:
            return float(np.sqrt(np.mean(self.raw_residuals_mm ** 2)))
        n = max(self.n_points, 3)
        return float(self.fre_mm / np.sqrt(max(1.0 - 2.0 / n, 1e-6)))

    @property
    def worst_fiducial(self) -> dict:
        if self.residuals_mm is None or not len(self.residuals_mm):
            return {}
        i = int(np.argmax(self.residuals_mm))
        return {"plate": self.plate_of_point[i], "residual_mm": float(self.residuals_mm[i]),
                "RAS_mm": [float(x) for x in self.image_points_ras[i]]}

    def predicted_tre_mm(self, target_ras=None, target_xyz=None) -> float:
        """Predicted TRE (mm) at a target (image RAS, or native frame coordinates; default the frame's
        coordinate origin), an RMS estimate: the final pose's error propagated from the fitted rods' seen
        ends, each off its model rod by what is seen under that pose (the rod's departure from its drawing
        and what per-slice noise leaves in the line; ``rod_pose_tre_mm``). Without fitted rods (manual
        clicks): Fitzpatrick, West & Maurer (1998) with the fiducials and their FLE."""
        system = self.frame_system
        if target_xyz is None:
            target_xyz = (system.native(np.zeros(3)) if target_ras is None
                          else apply(self.xyz_from_ras, target_ras))
        if self.rod_ends_frame is not None and len(self.rod_ends_frame) >= 6:
            target_frame = apply(system.frameras_from_native, target_xyz)
            return rod_pose_tre_mm(self.rod_ends_frame, self.rod_axes_frame, self.rod_offsets_frame, target_frame)
        raw = self.raw_frame_points_xyz is not None and len(self.raw_frame_points_xyz) >= 6
        pts = self.raw_frame_points_xyz if raw else self.frame_points_xyz
        return predicted_tre_mm(pts, self.fle_mm, target_xyz)

    def fiducial_markups(self) -> dict:
        """{label: RAS mm} of the rods' fitted end points and the diagonal fiducials (every 10th), for a
        Slicer point list that shows each rod hit on the CT."""
        out = {}
        for r in self.rods:
            out[f"{r['plate']} {r['rod']} start"] = r["start_ras"]
            out[f"{r['plate']} {r['rod']} end"] = r["end_ras"]
        for i in range(0, len(self.image_points_ras), 10):
            out[f"{self.plate_of_point[i]} diagonal {i} ({self.residuals_mm[i]:.2f} mm)"] = \
                self.image_points_ras[i]
        return out

    def to_dict(self, target_ras=None) -> dict:
        system = self.frame_system
        axes = ", ".join(system.native_axes)
        d = {
            "system": system.name,
            "system_key": system.key,
            "coordinate_systems": {
                "RAS": "image (CT) RAS mm as in 3D Slicer (+R right, +A anterior, +S superior)",
                "LPS": "DICOM patient coordinates mm (L = -R, P = -A) of the same space",
                "frame RAS": f"{system.name} frame, RAS axes of the frame, mm from its coordinate origin",
                system.name: system.native_note,
            },
            "xyz_from_ras": np.asarray(self.xyz_from_ras).tolist(),
            "xyz_from_ras_note": f"4x4 mapping image (CT) RAS mm to {system.name} {axes} mm ({system.native_note})",
            "ras_from_xyz": self.ras_from_xyz.tolist(),
            "xyz_from_lps": (np.asarray(self.xyz_from_ras) @ LPS_FROM_RAS).tolist(),
            "xyz_from_lps_note": "the same pose for DICOM patient coordinates (LPS mm, L = -R, P = -A)",
            "frame_from_ras": self.frame_from_ras.tolist(),
            "image_from_frame": self.image_from_frame.tolist(),
            "image_from_frame_note": "4x4 frame RAS mm -> image RAS mm: the frame's pose (a Slicer transform "
                                     "node whose children are drawn in frame RAS)",
            "method": self.method,
            "fre_mm": float(self.fre_mm),
            "fre_per_plate_mm": {k: float(v) for k, v in self.fre_per_plate.items()},
            "worst_fiducial": self.worst_fiducial,
            "fle_estimate_mm": self.fle_mm,
            "n_points": int(self.n_points),
            "n_rejected": int(self.n_rejected),
            "n_raw_points": 0 if self.raw_frame_points_xyz is None else int(len(self.raw_frame_points_xyz)),
            "points_per_plate": {k: int(v) for k, v in self.points_per_plate.items()},
            "plates_found": self.plates_found,
            "slice_axis": int(self.slice_axis),
            "threshold": None if self.threshold is None else float(self.threshold),
            "predicted_tre_mm_at_frame_centre": self.predicted_tre_mm(),
            "rod_ends_rms_off_model_mm": (None if self.rod_offsets_frame is None else
                                          float(np.sqrt(np.mean(np.sum(self.rod_offsets_frame ** 2, 1))))),
            "box_measured_mm": self.box_measured,
            "system_fit_cost_mm": {k: (None if not np.isfinite(v) else float(v))
                                   for k, v in self.system_costs_mm.items()},
            "localizer_fiducials": {
                "note": "rods: fitted line end points where the rod was seen (image RAS mm); diagonal: "
                        "the fiducials used (image RAS mm) with their residuals after the fit",
                "rods": [dict(r, start_ras=[float(x) for x in r["start_ras"]],
                              end_ras=[float(x) for x in r["end_ras"]]) for r in self.rods],
                "diagonal_points": [{"plate": p, "RAS_mm": [round(float(x), 4) for x in q],
                                     "residual_mm": round(float(r), 4)}
                                    for p, q, r in zip(self.plate_of_point, self.image_points_ras,
                                                       self.residuals_mm if self.residuals_mm is not None
                                                       else np.zeros(len(self.plate_of_point)))],
            },
            "warnings": list(self.warnings),
        }
        if target_ras is not None:
            t = np.asarray(target_ras, float)
            native = apply(self.xyz_from_ras, t)
            d["target"] = {"RAS_mm": [float(x) for x in t],
                           f"{system.name.replace(' ', '')}_{''.join(system.native_axes)}_mm":
                               [float(x) for x in native],
                           "frame": dict(zip(system.native_axes, (float(x) for x in native))),
                           "predicted_tre_mm": self.predicted_tre_mm(target_ras=t)}
            if system.key == "leksell":
                d["target"]["LeksellXYZ_mm"] = [float(x) for x in native]
        return d


def _measure_box(system: FrameSystem, plates: dict, frame_from_ras) -> dict:
    """The localizer seen through the fitted pose (frame RAS mm) against the model: each plate's rod
    spacing and the mean distance of its fitted rods from the model rods; for the Leksell G box, the
    lateral plates' separation. Tenths of a mm are normal; millimetres mean a wrong model or voxel size."""
    out = {}
    for name, p in plates.items():
        model = system.plates[name]
        lines = {}
        for rod, ln, mrod in zip(("first", "diagonal", "second"), (p.first, p.diagonal, p.second), model.rods()):
            ends = apply(frame_from_ras, np.array(ln.ends))
            lines[rod] = (ends, float(np.mean(_rod_distance(ends, mrod))))
        a, c = lines["first"][0].mean(0), lines["second"][0].mean(0)
        d_first = np.subtract(model.first[1], model.first[0])
        d_first = d_first / np.linalg.norm(d_first)
        gap = c - a
        spacing = float(np.linalg.norm(gap - (gap @ d_first) * d_first))
        out[name] = {"rod_spacing": spacing,
                     "rod_spacing_nominal": float(np.linalg.norm(np.subtract(model.second[0], model.first[0]))),
                     "rod_offset_from_model": {k: v[1] for k, v in lines.items()}}
        if system.key == "leksell":
            lateral = name in ("right", "left")
            # Leksell X (lateral plates) or Y (anterior/posterior) of the plate, from frame RAS
            xyz = apply(system.native_from_frameras, np.r_[lines["first"][0], lines["second"][0]])
            out[name]["X" if lateral else "Y"] = float(np.mean(xyz[:, 0 if lateral else 1]))
    if system.key == "leksell" and "right" in out and "left" in out:
        out["lateral_plate_separation"] = out["left"]["X"] - out["right"]["X"]
        out["nominal"] = {"right X": 5.0, "left X": 195.0, "anterior Y": 215.0, "posterior Y": -15.0,
                          "lateral_plate_separation": 190.0, "rod_spacing": 120.0}
    return out


def _finish(system: FrameSystem, plates: dict, cands: Candidates, method: str,
            max_fre_mm: float, min_plates: int = 3, **extra) -> FrameRegistration:
    """Final fit on the line fiducials of ``plates`` ({name: NPlate}) at the CT's slice planes."""
    ras, frame, names, raws = [], [], [], []
    normal = cands.slice_normal_ras
    for name, p in plates.items():
        a, b, c, f = _sample_plate(p, normal, cands.plane_offsets)
        ras.append(b)
        frame.append(diagonal_point(system.plates[name], f))
        names += [name] * len(b)
        ra, rb, rc = _raw_points(p, min_sep_mm=END_MARGIN_MM + 2.0)
        if len(ra):
            rf = np.einsum("ij,ij->i", rb - ra, rc - ra) / np.einsum("ij,ij->i", rc - ra, rc - ra)
            raws.append((rb, diagonal_point(system.plates[name], rf)))
    ras, frame = np.concatenate(ras), np.concatenate(frame)
    if len(ras) < 6:
        raise ProcessingError(f"no {system.name} N-localizer: too few fiducials on the fitted rods ({len(ras)})")
    m, keep = robust_rigid_fit(ras, frame)
    m = fit_pose_to_rods(system, plates, m)
    res = np.linalg.norm(apply(m, ras) - frame, axis=1)
    keep &= res <= OUTLIER_MM
    per_plate = {p: int(sum(1 for n, k in zip(names, keep) if k and n == p)) for p in plates}
    plates_ok = [p for p, n in per_plate.items() if n >= 3]
    if len(plates_ok) < min_plates:
        raise ProcessingError(f"no {system.name} N-localizer: only {len(plates_ok)} of {min_plates} plates fit "
                              f"({', '.join(plates_ok) or 'none'})")
    fre_pp = {p: float(np.sqrt(np.mean(res[keep & (np.array(names) == p)] ** 2))) for p in plates_ok}
    fre = float(np.sqrt(np.mean(res[keep] ** 2)))
    raw_pts = raw_res = None
    if raws:
        rb = np.concatenate([r[0] for r in raws])
        rf = np.concatenate([r[1] for r in raws])
        raw_res = np.linalg.norm(apply(m, rb) - rf, axis=1)
        ok = raw_res <= OUTLIER_MM
        raw_pts, raw_res = system.native(rf[ok]), raw_res[ok]
    rods = []
    for name, p in plates.items():
        for rod, ln in zip(("first", "diagonal", "second"), (p.first, p.diagonal, p.second)):
            s, e = ln.ends
            rods.append({"plate": name, "rod": rod, "start_ras": s, "end_ras": e, "n_points": int(len(ln.points)),
                         "rms_mm": float(ln.rms_mm)})
    ends, starts, axes = [], [], []          # the fitted rods' seen ends against the model rods
    for ln, a, u, _ in _rod_axes(system, {p: plates[p] for p in plates_ok}):
        ends.append(apply(m, np.array(ln.ends)))
        starts += [a, a]
        axes += [u, u]
    ends, axes = np.concatenate(ends), np.array(axes)
    off = ends - np.array(starts)
    off -= np.sum(off * axes, 1)[:, None] * axes
    native_from_ras = system.native_from_ras(m)
    reg = FrameRegistration(native_from_ras, fre, fre_pp, int(keep.sum()), int((~keep).sum()), per_plate,
                            ras[keep], system.native(frame[keep]), [n for n, k in zip(names, keep) if k],
                            method=method, slice_axis=cands.slice_axis, system=system.key,
                            residuals_mm=res[keep], raw_frame_points_xyz=raw_pts, raw_residuals_mm=raw_res,
                            rods=rods, rod_ends_frame=ends, rod_axes_frame=axes,
                            rod_offsets_frame=off, **extra)
    reg.box_measured = _measure_box(system, plates, m)
    if fre > max_fre_mm:
        raise ProcessingError(f"{system.name} localizer fit is poor: FRE {fre:.2f} mm > {max_fre_mm} mm over "
                              f"{reg.n_points} points")
    bad = [f"{k} {v['rod_spacing']:.2f}" for k, v in reg.box_measured.items()
           if isinstance(v, dict) and "rod_spacing_nominal" in v
           and abs(v["rod_spacing"] - v["rod_spacing_nominal"]) > 1.5]
    sep = reg.box_measured.get("lateral_plate_separation")
    if bad or (sep is not None and abs(sep - 190.0) > 1.5):
        reg.warnings.append(f"the localizer measures differently from the {system.name} model (rod spacing "
                            f"{', '.join(bad) or 'as nominal'}"
                            + (f", lateral plates {sep:.2f} mm apart, nominal 190" if sep is not None else "")
                            + "): check the frame type and the image's voxel size")
    if fre > 0.5:
        reg.warnings.append(f"FRE {fre:.2f} mm is high for an N-localizer (0.1-0.4 mm expected)")
    if reg.n_rejected > 0.2 * (reg.n_points + reg.n_rejected):
        reg.warnings.append(f"{reg.n_rejected} of {reg.n_points + reg.n_rejected} fiducials rejected")
    return reg


def fit_candidates(cands: Candidates, system=None, lines=None, max_fre_mm: float = 1.5, **extra) -> FrameRegistration:
    """Frame pose from rod candidates (``detection.find_candidates``, or synthetic ones): rod lines,
    N-plates, system and labels, refinement, final fit. ``system`` None tries every system."""
    systems = list(SYSTEMS.values()) if system is None else [get_system(system)]
    what = "N-localizer" if system is None else f"{systems[0].name} N-localizer"
    if lines is None:
        lines = fit_lines(cands, link_tracks(cands))
    widths = sorted({float(np.linalg.norm(np.subtract(p.second[0], p.first[0])))
                     for s in systems for p in s.plates.values()})
    plates = find_n_plates(lines, widths_mm=widths)
    if len({id(ln) for p in plates for ln in (p.first, p.second)}) < 6:
        n = len(_disjoint(plates))
        raise ProcessingError(f"no {what}: {n} of 3 plates (N-shaped rod triplets) among {len(lines)} straight "
                              f"rod-like lines")
    (cost, best_system, labelled, pose), costs = label_plates(plates, systems)
    if best_system is None or cost > 3.0:
        fits = ", ".join(f"{SYSTEMS[k].name} {v:.1f} mm" for k, v in costs.items() if np.isfinite(v))
        raise ProcessingError(f"no {what}: {len(_disjoint(plates))} N-shaped plates fit no frame model "
                              f"(best RMS misfit: {fits or 'no plates of the right size'})")
    refined = _refit_rods(cands, best_system, pose)
    labelled_names = {name for name, _ in labelled}
    refined = {name: p for name, p in refined.items()     # a plate not labelled (an MR box's 4th) needs
               if name in labelled_names                  # well-seen rods to be believed
               or min(len(p.first.points), len(p.diagonal.points), len(p.second.points)) >= 20}
    for name, p in labelled:           # keep the tracked lines where refinement found too little
        refined.setdefault(name, p)
    return _finish(best_system, refined, cands, extra.pop("method", "automatic"), max_fre_mm,
                   system_costs_mm=costs, n_lines=len(lines), **extra)


def _disjoint(plates) -> list:
    """Plates that share no line with an earlier one (how many distinct N's were seen)."""
    seen, out = set(), []
    for p in plates:
        ids = {id(p.first), id(p.diagonal), id(p.second)}
        if not ids & seen:
            out.append(p)
            seen |= ids
    return out


COARSE_PIXEL_MM = 1.2    # above it a localizer rod's peak in HU depends on where it falls in its pixel


def _default_thresholds(ct: Volume, polarity: str) -> list:
    """Thresholds to try, best guess first: for a CT in HU (air at -1000) 400, 1000, 250 and 150 HU (faint
    rods in coarse voxels; acrylic plates are ~120 HU), 250 first when the in-plane pixels are coarser than
    ``COARSE_PIXEL_MM`` (a 1 mm rod centred on a pixel corner puts a quarter of its section in each of
    four pixels: at 1.6 mm its peak falls to ~-300 HU and at 400 HU each rod breaks into short pieces
    whose plates fit no frame model); for other
    images (MR boxes, unscaled data) fractions of the range between the median and the 99.99th
    percentile."""
    sign = -1.0 if polarity == "dark" else 1.0
    sample = np.asarray(ct.data[::4, ::4, ::4], np.float32)
    if polarity == "bright" and ct.meta.get("modality", "CT") == "CT" and np.percentile(sample, 5) < -500:
        pixel_mm = float(np.sqrt(np.prod(np.sort(ct.voxel_mm)[:2])))
        return [250.0, 400.0, 150.0, 1000.0] if pixel_mm > COARSE_PIXEL_MM else [400.0, 1000.0, 250.0, 150.0]
    lo, hi = np.percentile(sign * sample, [50.0, 99.99])
    return [float(sign * (lo + f * (hi - lo))) for f in (0.4, 0.25, 0.6)]


def register_frame(ct: Volume, system=None, progress=None, threshold=None, polarity: str = "bright",
                   max_fre_mm: float = 1.5) -> FrameRegistration:
    """Find and register the N-localizer of a Leksell G, CRW or BRW frame in ``ct`` (a CT in HU, or an MR
    localizer with ``polarity`` 'bright'/'dark'). ``system`` ('leksell', 'crw', 'brw') forces the frame;
    by default it is recognised from the localizer's geometry. ``threshold`` (image units) separates the
    rods from their surroundings; by default a few levels are tried. Returns the pose ``xyz_from_ras``
    (image RAS mm -> native frame coordinates) with its FRE; raises ``ProcessingError`` with one line
    saying what was found when no localizer fits (fewer than three plates, or FRE > ``max_fre_mm``)."""
    if polarity not in ("bright", "dark"):
        raise InputError(f"polarity must be 'bright' or 'dark', not {polarity!r}")
    systems = None if system is None else get_system(system)
    progress = as_progress(progress)
    levels = [float(threshold)] if threshold is not None else _default_thresholds(ct, polarity)
    errors = []
    try:
        for n, level in enumerate(levels):
            part = progress.sub(n / len(levels), (n + 1) / len(levels)) if n else progress.sub(0.0, 0.9)
            lines, cands = find_rod_lines(ct, level, polarity, part.sub(0.0, 0.9))
            part.update(0.95, "localizer: fitting the frame pose")
            try:
                reg = fit_candidates(cands, systems, lines=lines, max_fre_mm=max_fre_mm, threshold=level)
            except ProcessingError as exc:
                errors.append((level, exc))
                continue
            if n:
                reg.warnings.append(f"rods found at threshold {level:g} (the default level failed: {errors[0][1]})")
            progress.update(1.0, f"localizer: {reg.frame_system.name}, FRE {reg.fre_mm:.2f} mm over "
                                 f"{reg.n_points} points")
            return reg
    except MemoryError:
        raise ProcessingError("out of memory while looking for the localizer rods") from None
    level, exc = errors[0]
    more = f" (also tried thresholds {', '.join(f'{lv:g}' for lv, _ in errors[1:])})" if len(errors) > 1 else ""
    raise ProcessingError(f"{exc} at threshold {level:g}{more}")


# ---- manual fallback ----------------------------------------------------------------------------------
def register_frame_manual(clicks, max_fre_mm: float = 1.5, system="leksell") -> FrameRegistration:
    """Manual fallback: ``clicks`` = {plate: [(first_rod, diagonal, second_rod), ...]} with rod centroids
    clicked on a few slices (image RAS mm). Plates and rods as in ``frames.SYSTEMS[system]`` (Leksell G:
    right, left, anterior, posterior; ``first`` is the posterior rod of a lateral plate and the patient's-
    right rod of the anterior/posterior plate)."""
    system = get_system(system)
    src, dst, names = [], [], []
    for plate, rows in clicks.items():
        if plate not in system.plates:
            raise InputError(f"unknown {system.name} localizer plate {plate!r}; expected one of "
                             f"{', '.join(system.plates)}")
        for a, b, c in rows:
            t = Triplet(np.asarray(a, float), np.asarray(b, float), np.asarray(c, float))
            src.append(t.diagonal)
            dst.append(diagonal_point(system.plates[plate], t.fraction))
            names.append(plate)
    if len(src) < 3:
        raise InputError("at least three clicked slices (rod triplets) are needed")
    src, dst = np.array(src), np.array(dst)
    m, keep = robust_rigid_fit(src, dst)
    res = np.linalg.norm(apply(m, src) - dst, axis=1)
    per_plate = {p: int(sum(1 for n, k in zip(names, keep) if k and n == p)) for p in clicks}
    plates_ok = [p for p, n in per_plate.items() if n >= 1]
    if len(plates_ok) < 3:
        raise ProcessingError(f"{system.name} localizer: clicks on {len(plates_ok)} plate(s); three are needed")
    fre = float(np.sqrt(np.mean(res[keep] ** 2)))
    fre_pp = {p: float(np.sqrt(np.mean(res[keep & (np.array(names) == p)] ** 2))) for p in plates_ok}
    reg = FrameRegistration(system.native_from_ras(m), fre, fre_pp, int(keep.sum()), int((~keep).sum()), per_plate,
                            src[keep], system.native(dst[keep]), [n for n, k in zip(names, keep) if k],
                            method="manual", system=system.key, residuals_mm=res[keep])
    if fre > max_fre_mm:
        raise ProcessingError(f"{system.name} localizer fit of the clicks is poor: FRE {fre:.2f} mm > {max_fre_mm} mm")
    return reg


def clicks_from_points(points: dict) -> dict:
    """Group named points (image RAS mm) labelled '<plate> <slice> <rod>' (e.g. 'right 1 first',
    'right_1_diagonal', 'left-anterior 2 second'; rods first/diagonal/second) into
    ``register_frame_manual``'s {plate: [(first, diagonal, second), ...]}."""
    import re
    label = re.compile(r"^\s*([A-Za-z]+(?:-[A-Za-z]+)?)[\s_:]+([0-9A-Za-z]+)[\s_:\-]+(first|diagonal|second)\s*$",
                       re.IGNORECASE)
    groups, bad = {}, []
    for name, p in points.items():
        m = label.match(str(name))
        if not m:
            m2 = re.match(r"^\s*([A-Za-z]+)-([0-9A-Za-z]+)-(first|diagonal|second)\s*$", str(name), re.IGNORECASE)
            if not m2:
                bad.append(str(name))
                continue
            m = m2
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
