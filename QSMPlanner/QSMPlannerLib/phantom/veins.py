"""Veins and dural sinuses as paramagnetic tubes: centre lines in MNI mm, radii in mm.

Sinuses (superior sagittal, straight, transverse) follow the inner surface of the intracranial volume;
deep veins (internal cerebral, thalamostriate, basal veins of Rosenthal, vein of Galen) follow
textbook MNI positions; cortical veins run over the convexity on the brain surface from the midline
down the side, at random positions per patient. Optionally a cortical vein is placed on the standard
straight frontal path to each STN (60° above the AC-PC plane, 20° lateral), where it must be avoided.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from .anatomy import HEAD_CENTRE_MNI, ModelGrid, ray_surface, static_model


@dataclass
class Vein:
    name: str
    points: np.ndarray   # (N, 3) MNI mm
    radii: np.ndarray    # (N,) mm
    kind: str = "vein"   # "vein" or "sinus"

    def to_dict(self, points=None) -> dict:
        pts = self.points if points is None else points
        return {"name": self.name, "kind": self.kind, "points": np.round(pts, 3).tolist(),
                "radii_mm": np.round(self.radii, 3).tolist()}


STANDARD_ELEVATION_DEG = 60.0   # above the AC-PC plane, sagittal projection
STANDARD_LATERAL_DEG = 20.0     # from the mid-sagittal plane, coronal projection


def standard_direction(side: int) -> np.ndarray:
    """Unit vector from target towards entry of the usual straight frontal path (MNI axes);
    side = -1 left, +1 right."""
    e, l_ = np.deg2rad(STANDARD_ELEVATION_DEG), np.deg2rad(STANDARD_LATERAL_DEG)
    u = np.array([side * np.tan(l_) * np.sin(e), np.cos(e), np.sin(e)])
    return u / np.linalg.norm(u)


def stn_centroids_mni(spacing: float = 1.0) -> dict:
    st = static_model(spacing)
    g = st["grid"]
    out = {}
    for name, v in (("STN_L", 16), ("STN_R", 116)):
        idx = np.argwhere(st["cit"] == v).mean(0)
        out[name] = g.origin + g.spacing * idx
    return out


def _surface_point(grid, soft, centre, direction, offset_mm):
    d = np.asarray(direction, float)
    d = d / np.linalg.norm(d)
    r = ray_surface(grid, soft, centre, d)
    return np.asarray(centre) + d * (r + offset_mm)


def _convexity_path(grid, brain, centre, side, beta, theta, wiggle) -> np.ndarray:
    """Points on the brain surface along polar angles ``theta`` from ``centre`` (a cortical vein's
    course over the convexity of hemisphere ``side``), azimuth ``beta`` + ``wiggle``."""
    pts = []
    for t, w in zip(theta, wiggle):
        b = beta + w
        d = np.cos(t) * np.array([0, 0, 1.0]) + np.sin(t) * np.array([side * np.cos(b), np.sin(b), 0.0])
        pts.append(_surface_point(grid, brain, centre, d, 0.2))
    return np.array(pts)


def make_veins(rng: np.random.Generator, spacing: float, on_standard_trajectory: bool = False):
    """The patient's veins (list of ``Vein``, MNI mm) and the standard trajectories
    {"left"/"right": (target, entry) MNI mm} that were used."""
    st = static_model(spacing)
    grid: ModelGrid = st["grid"]
    icv, brain = st["icv"], st["brain"]
    c = HEAD_CENTRE_MNI
    veins = []

    # superior sagittal sinus: mid-sagittal, just inside the intracranial surface
    theta = np.deg2rad(np.linspace(28.0, 188.0, 48))
    radii = np.linspace(2.2, 4.5, theta.size)
    pts = np.array([_surface_point(grid, icv, c, (0.0, np.cos(t), np.sin(t)), -r - 0.6)
                    for t, r in zip(theta, radii)])
    pts[:, 0] += rng.normal(0.0, 0.4)
    veins.append(Vein("superior sagittal sinus", pts, radii, "sinus"))
    torcular = pts[-1]
    galen = np.array([0.0, -47.0, 4.0]) + rng.normal(0.0, 0.8, 3) * [0.2, 1, 1]
    veins.append(Vein("vein of Galen", np.array([galen + [0, 2.0, 3.0], galen]), np.array([2.0, 2.2])))
    n = 12
    straight = galen + np.linspace(0.0, 1.0, n)[:, None] * (torcular - galen)
    straight[:, 2] += 2.0 * np.sin(np.linspace(0.0, np.pi, n))
    veins.append(Vein("straight sinus", straight, np.linspace(2.0, 3.0, n), "sinus"))
    for side, tag in ((-1, "L"), (1, "R")):
        a = np.deg2rad(np.linspace(4.0, 105.0, 20))
        dz = torcular[2] - c[2]
        tpts = np.array([_surface_point(grid, icv, [0.0, c[1], c[2] + dz],
                                        (side * np.sin(t), -np.cos(t), -0.12 - 0.25 * t), -3.6)
                         for t in a])
        tpts = np.vstack([torcular, tpts])
        veins.append(Vein(f"transverse sinus {tag}", tpts, np.linspace(3.8, 3.0, len(tpts)), "sinus"))

    # deep veins (textbook MNI positions, jittered per patient)
    jit = lambda s=0.8: rng.normal(0.0, s, 3)
    for side, tag in ((-1, "L"), (1, "R")):
        x = np.array([side, 1.0, 1.0])
        icv_pts = np.array([[2.8, -3.0, 12.0], [2.8, -12.0, 14.0], [2.5, -22.0, 14.5], [2.0, -33.0, 12.0],
                            [1.0, -42.0, 7.0], [0.0, -47.0, 4.0]]) * x + jit()
        icv_pts[-1] = galen
        veins.append(Vein(f"internal cerebral vein {tag}", icv_pts, np.full(len(icv_pts), 1.3)))
        tsv = np.array([[20.0, -28.0, 21.0], [17.5, -18.0, 21.0], [14.0, -10.0, 18.5], [9.0, -5.0, 15.0],
                        [2.8, -3.0, 12.0]]) * x + jit()
        tsv[-1] = icv_pts[0]
        veins.append(Vein(f"thalamostriate vein {tag}", tsv, np.full(len(tsv), 1.0)))
        bvr = np.array([[14.0, 2.0, -14.0], [18.0, -12.0, -11.0], [19.0, -25.0, -5.0], [13.0, -37.0, 0.0],
                        [5.0, -44.0, 3.0], [0.0, -47.0, 4.0]]) * x + jit()
        bvr[-1] = galen
        veins.append(Vein(f"basal vein {tag}", bvr, np.full(len(bvr), 1.1)))

    # cortical veins on the convexity, draining into the sagittal sinus
    for side, tag in ((-1, "L"), (1, "R")):
        count = int(rng.integers(3, 6))
        ys = np.sort(rng.uniform(-75.0, 45.0, count))
        for i, y0 in enumerate(ys):
            beta = np.deg2rad(rng.uniform(-25.0, 25.0))
            th = np.deg2rad(np.linspace(6.0, rng.uniform(65.0, 95.0), 26))
            wig = np.deg2rad(7.0) * np.sin(np.linspace(0, rng.uniform(2, 5), th.size) + rng.uniform(0, 6))
            pts = _convexity_path(grid, brain, np.array([0.0, y0, 12.0]), side, beta, th, wig)
            r = rng.uniform(0.9, 1.5)
            veins.append(Vein(f"cortical vein {tag}{i + 1}", pts,
                              np.linspace(r * 1.2, r * 0.8, len(pts))))

    trajectories = {}
    stn = stn_centroids_mni(spacing)
    for side, tag, key in ((-1, "L", "left"), (1, "R", "right")):
        target = stn[f"STN_{tag}"]
        u = standard_direction(side)
        entry = _surface_point(grid, brain, target, u, 0.0)
        trajectories[key] = (target, entry)
        if not on_standard_trajectory:
            continue
        # a medio-lateral tangent at the entry, the vein lying on the surface through the entry point
        tang = np.cross(u, [0.0, 1.0, 0.0])
        tang /= np.linalg.norm(tang)
        p0 = entry - 0.4 * u
        pts = []
        for t in np.linspace(-24.0, 24.0, 17):
            if abs(t) < 1e-9:
                pts.append(p0)
                continue
            q = p0 + t * tang
            pts.append(_surface_point(grid, brain, c, q - c, 0.2))
        veins.append(Vein(f"cortical vein on standard trajectory {tag}", np.array(pts), np.full(len(pts), 1.6)))
    return veins, trajectories


@numba.njit(cache=True)
def _raster_segment(out, origin, h, a, b, ra, rb):
    """Max-combine the partial-volume occupancy of a tapered capsule a-b into ``out``."""
    reach = max(ra, rb) + 1.5 * h
    ab = b - a
    l2 = ab[0] * ab[0] + ab[1] * ab[1] + ab[2] * ab[2]
    lo = np.empty(3, np.int64)
    hi = np.empty(3, np.int64)
    for d in range(3):
        lo[d] = max(int(np.floor((min(a[d], b[d]) - reach - origin[d]) / h)), 0)
        hi[d] = min(int(np.ceil((max(a[d], b[d]) + reach - origin[d]) / h)) + 1, out.shape[d])
    for i in range(lo[0], hi[0]):
        px = origin[0] + h * i - a[0]
        for j in range(lo[1], hi[1]):
            py = origin[1] + h * j - a[1]
            for k in range(lo[2], hi[2]):
                pz = origin[2] + h * k - a[2]
                t = (px * ab[0] + py * ab[1] + pz * ab[2]) / l2 if l2 > 0 else 0.0
                t = min(max(t, 0.0), 1.0)
                dx, dy, dz = px - t * ab[0], py - t * ab[1], pz - t * ab[2]
                dist = np.sqrt(dx * dx + dy * dy + dz * dz)
                f = 0.5 + (ra + t * (rb - ra) - dist) / h
                if f > 1.0:
                    f = 1.0
                if f > out[i, j, k]:
                    out[i, j, k] = f


def rasterise_veins(grid: ModelGrid, veins):
    """(vein fraction, sinus fraction) on the model grid: partial volume from the distance to the
    centre line relative to the (linearly varying) radius."""
    out = {"vein": np.zeros(grid.shape, np.float32), "sinus": np.zeros(grid.shape, np.float32)}
    origin = np.asarray(grid.origin, np.float64)
    for v in veins:
        pts = np.asarray(v.points, np.float64)
        for s in range(len(pts) - 1):
            _raster_segment(out[v.kind], origin, float(grid.spacing), pts[s], pts[s + 1],
                            float(v.radii[s]), float(v.radii[s + 1]))
    return out["vein"], out["sinus"]


# ---- harder digital heads (issue 18): more cortical veins -------------------------------------------
def extra_cortical_veins(rng: np.random.Generator, spacing: float, per_side: int) -> list:
    """``per_side`` more cortical veins per hemisphere on the convexity (as the default ones: along
    the brain surface from a lateral start up towards the sagittal sinus), for denser venous trees."""
    st = static_model(spacing)
    grid, brain = st["grid"], st["brain"]
    out = []
    for side, tag in ((-1, "L"), (1, "R")):
        for i in range(int(per_side)):
            y0 = rng.uniform(-85.0, 55.0)
            beta = np.deg2rad(rng.uniform(-30.0, 30.0))
            th = np.deg2rad(np.linspace(rng.uniform(4.0, 30.0), rng.uniform(60.0, 105.0), 26))
            wig = np.deg2rad(7.0) * np.sin(np.linspace(0, rng.uniform(2, 5), th.size) + rng.uniform(0, 6))
            pts = _convexity_path(grid, brain, np.array([0.0, y0, rng.uniform(0.0, 20.0)]), side, beta, th, wig)
            r = rng.uniform(0.7, 1.6)
            out.append(Vein(f"extra cortical vein {tag}{i + 1}", pts, np.linspace(r * 1.2, r * 0.8, len(pts))))
    return out
