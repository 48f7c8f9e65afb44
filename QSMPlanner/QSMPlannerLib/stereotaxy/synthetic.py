"""Synthetic stereotactic CTs: any frame system's N-localizer, with or without the clutter of a clinical CT.

The CT is rendered slab by slab (a few slices at a time), so a 512x512x400 CT costs its own array and a
few MB more. Rods, pins, posts, vessels and dental metal are capsules rendered with partial volume (each
voxel supersampled as a box); the head (scalp, skull, brain, ventricles, neck), the frame ring, the head
holder and the CT table are analytic shapes. Dental metal throws streaks across its slices.
Everything is placed in frame RAS (see ``frames.py``) and moved into the image by the frame's pose.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numba import njit

from ..volume import Volume, ras_from_ijk_matrix, rotation_matrix
from .frames import get_system
from .geometry import FRAMERAS_FROM_XYZ, apply, segment_distance

AIR_HU = -1000.0
ROD_HU = 1500.0          # CT localizer rods appear far brighter than bone in most protocols
ROD_RADIUS_MM = 1.0
PIN_HU = 3000.0
BACKGROUND_AIR_HU = -300.0   # a given background below this is air: the frame's hardware may fill it
ROD_STYLE = {"leksell": (1500.0, 1.0), "crw": (1300.0, 1.0), "brw": (1800.0, 1.0)}   # (HU, radius mm)


@dataclass
class Clutter:
    """What a clinical frame CT holds besides the localizer (all on by default)."""
    head: bool = True            # scalp, skull, brain, ventricles, neck
    vessels: int = 14            # contrast-enhanced vessels: in the brain, on the scalp, and tubing by the rods
    dental_metal: bool = True    # fillings with streak artefacts
    pins: bool = True            # four head pins
    posts: bool = True           # four frame posts
    ring: bool = True            # the frame's base ring
    head_holder: bool = True     # head holder shell and CT table
    plates: bool = True          # the localizer's acrylic plates around the rods


# ---- partial-volume capsules ------------------------------------------------------------------
def _capsule_weights(ras_from_ijk, k0, k1, shape_ij, cap):
    """(flat indices into the (I, J, k1-k0) slab, occupancy 0..1) of capsule ``cap`` (see ``_prepare``).
    Only the voxels within reach are visited; boundary voxels are supersampled."""
    a, b, radius, _, ia, ib, reach, _, _ = cap
    spacing = np.linalg.norm(ras_from_ijk[:3, :3], axis=0)
    pad = 0.5 * float(np.linalg.norm(spacing))
    # the part of the axis that can touch slices k0..k1-1
    lo_k, hi_k = k0 - 0.5 - reach[2], k1 - 0.5 + reach[2]
    dk = ib[2] - ia[2]
    if abs(dk) < 1e-9:
        t0, t1 = 0.0, 1.0
    else:
        ta, tb = (lo_k - ia[2]) / dk, (hi_k - ia[2]) / dk
        t0, t1 = max(0.0, min(ta, tb)), min(1.0, max(ta, tb))
        if t0 > t1:
            return None
    p0, p1 = ia + t0 * (ib - ia), ia + t1 * (ib - ia)
    lo = np.floor(np.minimum(p0, p1) - reach).astype(int)
    hi = np.ceil(np.maximum(p0, p1) + reach).astype(int)
    lo = np.maximum(lo, [0, 0, k0])
    hi = np.minimum(hi, [shape_ij[0] - 1, shape_ij[1] - 1, k1 - 1])
    if np.any(hi < lo):
        return None
    grids = np.meshgrid(*[np.arange(l, h + 1) for l, h in zip(lo, hi)], indexing="ij")
    ijk = np.stack([g.ravel() for g in grids], -1).astype(np.float64)
    d0 = segment_distance(apply(ras_from_ijk, ijk), a, b)
    near = d0 <= radius + pad
    ijk, d0 = ijk[near], d0[near]
    if not len(ijk):
        return None
    w = (d0 <= radius - pad).astype(np.float32)
    edge = ~(d0 <= radius - pad)
    if edge.any():
        nsub = np.clip(np.ceil(spacing / 0.25), 2, 10).astype(int)
        sub = np.stack(np.meshgrid(*[(np.arange(m) + 0.5) / m - 0.5 for m in nsub], indexing="ij"),
                       -1).reshape(-1, 3)
        e_ijk = ijk[edge]
        out = np.empty(len(e_ijk), np.float32)
        step = max(1, 200000 // len(sub))
        for s in range(0, len(e_ijk), step):
            pts = (e_ijk[s:s + step, None, :] + sub[None]).reshape(-1, 3)
            d = segment_distance(apply(ras_from_ijk, pts), a, b)
            out[s:s + step] = (d <= radius).reshape(-1, len(sub)).mean(axis=1)
        w[edge] = out
    keep = w > 0
    ii = ijk[keep].astype(np.int64)
    flat = (ii[:, 0] * shape_ij[1] + ii[:, 1]) * (k1 - k0) + (ii[:, 2] - k0)
    return flat, w[keep]


def _prepare(segments, ras_from_ijk):
    """Capsules (a_ras, b_ras, radius_mm, hu) with their ends in voxel indices, reach (index units per
    axis) and k range, so that slabs they miss are skipped cheaply."""
    ijk_from_ras = np.linalg.inv(ras_from_ijk)
    spacing = np.linalg.norm(ras_from_ijk[:3, :3], axis=0)
    pad = 0.5 * float(np.linalg.norm(spacing))
    index_per_mm = np.linalg.norm(ijk_from_ras[:3, :3], axis=1)
    out = []
    for a, b, radius, hu in segments:
        a, b = np.asarray(a, float), np.asarray(b, float)
        ia, ib = apply(ijk_from_ras, a), apply(ijk_from_ras, b)
        reach = (float(radius) + pad) * index_per_mm
        out.append((a, b, float(radius), float(hu), ia, ib, reach, min(ia[2], ib[2]) - reach[2] - 0.5,
                    max(ia[2], ib[2]) + reach[2] + 0.5))
    return out


def _paint(slab, ras_from_ijk, k0, caps):
    """Blend prepared capsules into ``slab`` (I, J, k1-k0) with partial volume."""
    k1 = k0 + slab.shape[2]
    flat_slab = slab.reshape(-1)
    for cap in caps:
        if cap[8] < k0 or cap[7] > k1 - 1:
            continue
        hit = _capsule_weights(ras_from_ijk, k0, k1, slab.shape[:2], cap)
        if hit is None:
            continue
        flat, w = hit
        flat_slab[flat] += w * (np.float32(cap[3]) - flat_slab[flat])


# ---- clutter --------------------------------------------------------------------------------------
HEAD_CENTRE = np.array([0.0, 5.0, 8.0])          # frame RAS mm
HEAD_AXES = np.array([72.0, 92.0, 86.0])          # skin ellipsoid semi-axes, mm
SCALP_MM, SKULL_MM = 5.0, 7.0


def _smooth_path(rng, start, direction, length, step=3.0, wiggle=0.25):
    """A smooth random polyline (N, 3) from ``start`` roughly along ``direction``."""
    d = np.asarray(direction, float)
    d /= np.linalg.norm(d)
    pts = [np.asarray(start, float)]
    for _ in range(max(1, int(length / step))):
        d = d + wiggle * rng.normal(size=3)
        d /= np.linalg.norm(d)
        pts.append(pts[-1] + step * d)
    return np.array(pts)


RING_BELOW_RODS_MM = (8.0, 22.0)     # the base ring's top and bottom below the rods' lower ends


def clutter_extent_s(system) -> float:
    """Frame RAS S (mm) of the lowest hardware: the base ring's underside."""
    system = get_system(system)
    return min(p[2] for plate in system.plates.values() for rod in plate.rods() for p in rod) - RING_BELOW_RODS_MM[1]


def clutter_segments(system, clutter: Clutter, rng) -> tuple:
    """(capsules [(a, b, radius_mm, hu)] in frame RAS, dental metal centres [(centre, radius)]) for
    ``clutter`` around a head in the frame of ``system``."""
    system = get_system(system)
    caps, metal = [], []
    rods_s = [p[2] for plate in system.plates.values() for rod in plate.rods() for p in rod]
    s_bottom = min(rods_s)
    ring_radius = 105.0 if system.key != "brw" else 118.0
    if clutter.vessels:
        inner = HEAD_AXES - SCALP_MM - SKULL_MM
        for n in range(clutter.vessels):
            kind = n % 3
            if kind == 0:      # cerebral vessel: a wandering tube inside the brain
                start = HEAD_CENTRE + rng.uniform(-0.5, 0.5, 3) * inner
                path = _smooth_path(rng, start, rng.normal(size=3), rng.uniform(40, 110))
                path = path[np.sum(((path - HEAD_CENTRE) / inner) ** 2, 1) < 0.95]
                radius, hu = rng.uniform(1.0, 2.5), rng.uniform(300, 550)
            elif kind == 1:    # scalp artery: runs up the side of the head
                side = rng.choice([-1.0, 1.0])
                ang = rng.uniform(-0.9, 0.9)
                start = HEAD_CENTRE + [side * (HEAD_AXES[0] - 2.5) * np.cos(ang),
                                       (HEAD_AXES[1] - 2.5) * np.sin(ang), -45.0]
                path = _smooth_path(rng, start, [0.0, 0.0, 1.0], rng.uniform(60, 110), wiggle=0.12)
                radius, hu = rng.uniform(0.9, 1.5), rng.uniform(400, 600)
            else:              # contrast-filled tubing draped by the localizer rods
                plate = [system.plates[p] for p in system.required_plates][(n // 3) % len(system.required_plates)]
                (a, _), (c, _) = plate.rods()[0], plate.rods()[2]
                out = np.cross(c - a, [0, 0, 1.0])
                out /= np.linalg.norm(out)
                if out @ (a + c) / 2 < 0:
                    out = -out
                start = a + rng.uniform(0.1, 0.9) * (c - a) + out * rng.uniform(3.0, 6.0)
                start[2] = rng.uniform(-40, 40)
                path = _smooth_path(rng, start, rng.normal(size=3) * [0.3, 0.3, 0.0] + [0, 0, 1.0],
                                    rng.uniform(50, 90), wiggle=0.1)
                radius, hu = 1.5, rng.uniform(450, 700)
            caps += [(p, q, radius, hu) for p, q in zip(path[:-1], path[1:])]
    if clutter.posts or clutter.pins:
        for sr in (-1.0, 1.0):
            for sa in (-1.0, 1.0):
                base = np.array([sr * 82.0, HEAD_CENTRE[1] + sa * 55.0, s_bottom - 4.0])
                top = base + [0.0, 0.0, 60.0]
                if clutter.posts:
                    caps.append((base, top, 4.0, 1100.0))
                if clutter.pins:      # from the post's top toward the head
                    to_head = HEAD_CENTRE + [0, 0, top[2] - HEAD_CENTRE[2]] - top
                    to_head /= np.linalg.norm(to_head)
                    caps.append((top - 4.0 * to_head, top + 22.0 * to_head, 1.5, PIN_HU))
    if clutter.dental_metal:
        for c in ([-17.0, 52.0, -62.0], [16.0, 54.0, -61.0], [0.0, 64.0, -63.0])[:int(rng.integers(2, 4))]:
            c = HEAD_CENTRE + np.asarray(c) + rng.normal(0, 1.0, 3)
            r = rng.uniform(2.5, 4.0)
            caps.append((c, c + rng.normal(0, 1.5, 3), r, 3500.0))
            metal.append((c, r))
    return caps, metal, ring_radius, s_bottom


@njit(cache=True)
def _background_kernel(out, frame_from_ijk, k0, params, boxes):  # pragma: no cover (compiled)
    """Analytic background into ``out`` (I, J, nk) at frame RAS = frame_from_ijk @ (i, j, k0 + kk).
    params: flags head, ring, holder; head centre (3) and axes (3); scalp, skull mm; ring radius;
    rods' lower end S; the ring's top and bottom below it (mm). boxes (n, 13): centre (3), three unit axes (9), HU; half sizes in the axes' norms
    (axis k scaled by 1 / half size k), for the localizer's plastic plates."""
    head, ring, holder = params[0] > 0, params[1] > 0, params[2] > 0
    cr, ca, cs = params[3], params[4], params[5]
    ar, aa, as_ = params[6], params[7], params[8]
    scalp, skull, ring_r, s_bottom = params[9], params[10], params[11], params[12]
    ring_below = (params[13], params[14])
    br, ba, bs = ar - scalp, aa - scalp, as_ - scalp
    nr, na, ns = br - skull, ba - skull, bs - skull
    ni, nj, nk = out.shape
    m = frame_from_ijk
    for kk in range(nk):
        k = k0 + kk
        for i in range(ni):
            for j in range(nj):
                r = m[0, 0] * i + m[0, 1] * j + m[0, 2] * k + m[0, 3]
                a = m[1, 0] * i + m[1, 1] * j + m[1, 2] * k + m[1, 3]
                s = m[2, 0] * i + m[2, 1] * j + m[2, 2] * k + m[2, 3]
                v = -1000.0
                if head:
                    x, y, z = r - cr, a - ca, s - cs
                    if (x / ar) ** 2 + (y / aa) ** 2 + (z / as_) ** 2 < 1.0:
                        v = 40.0
                    elif z < -40.0 and (x / 52.0) ** 2 + ((y + 8.0) / 62.0) ** 2 < 1.0:
                        v = 40.0         # neck
                    jaw = (x / 46.0) ** 2 + ((y - 42.0) / 40.0) ** 2 + ((z + 64.0) / 26.0) ** 2
                    if jaw < 1.0:
                        v = 1150.0 if jaw > 0.8 else 40.0     # face with the mandible's cortex
                    if (x / br) ** 2 + (y / ba) ** 2 + (z / bs) ** 2 < 1.0:
                        if (x / nr) ** 2 + (y / na) ** 2 + (z / ns) ** 2 < 1.0:
                            v = 33.0
                            for side in (-1.0, 1.0):
                                if ((x - side * 9.0) / 6.0) ** 2 + (y / 28.0) ** 2 + ((z - 12.0) / 9.0) ** 2 < 1.0:
                                    v = 6.0
                        else:
                            v = 1250.0
                if ring and s_bottom - ring_below[1] < s < s_bottom - ring_below[0]:
                    rr = np.sqrt(r * r + (0.9 * (a - ca)) ** 2)
                    if abs(rr - ring_r) < 6.0:
                        v = 1900.0
                if holder:
                    if a < -142.0 and a > -152.0:
                        v = 250.0
                    elif a < ca - 50.0 and s < cs + 10.0 and abs(np.sqrt(r * r + (a - ca) ** 2) - 100.0) < 2.0:
                        v = 450.0
                for b in range(boxes.shape[0]):
                    x, y, z = r - boxes[b, 0], a - boxes[b, 1], s - boxes[b, 2]
                    if (abs(x * boxes[b, 3] + y * boxes[b, 4] + z * boxes[b, 5]) < 1.0
                            and abs(x * boxes[b, 6] + y * boxes[b, 7] + z * boxes[b, 8]) < 1.0
                            and abs(x * boxes[b, 9] + y * boxes[b, 10] + z * boxes[b, 11]) < 1.0):
                        v = boxes[b, 12]
                out[i, j, kk] = v


def plate_boxes(system, plates, thickness_mm: float = 8.0, margin_mm: float = 10.0, hu: float = 120.0):
    """(n, 13) plastic plates holding each N's rods (frame RAS): centre, three axes scaled by the inverse
    half sizes (rod to rod, vertical, through the plate), HU (acrylic)."""
    out = []
    for name in plates:
        (f0, f1), _, (s0, s1) = system.plates[name].rods()
        centre = (f0 + f1 + s0 + s1) / 4
        u, v = s0 - f0, f1 - f0
        w, h = np.linalg.norm(u), np.linalg.norm(v)
        u, v = u / w, v / h
        n = np.cross(u, v)
        out.append(np.r_[centre, u / (w / 2 + margin_mm), v / (h / 2 + margin_mm), n / (thickness_mm / 2), hu])
    return np.array(out, np.float64).reshape(-1, 13)


def _background_slab(out, frame_from_ijk, k0, clutter: Clutter | None, ring_radius, s_bottom, boxes):
    """Analytic background (HU) of slices k0.. into ``out`` (I, J, nk) float32: air, and with ``clutter``
    the head (scalp, skull, brain, ventricles, neck), the frame ring, the head holder, the table and the
    localizer's plastic plates (``boxes``)."""
    if clutter is None:
        out[...] = AIR_HU
        return
    params = np.array([clutter.head, clutter.ring, clutter.head_holder, *HEAD_CENTRE, *HEAD_AXES, SCALP_MM,
                       SKULL_MM, ring_radius, s_bottom, *RING_BELOW_RODS_MM], np.float64)
    _background_kernel(out, np.ascontiguousarray(frame_from_ijk, np.float64), k0, params, boxes)


@njit(cache=True)
def _streak_kernel(out, m, k, centre, dirs, amps, widths, fade):  # pragma: no cover (compiled)
    """Add streaks through ``centre`` (frame RAS) along unit ``dirs`` (n, 3) to slice ``out`` (I, J) at
    index k: amp * fade * exp(-d_perp^2 / 2 w^2) * exp(-distance / 90 mm)."""
    ni, nj = out.shape
    for i in range(ni):
        for j in range(nj):
            x = m[0, 0] * i + m[0, 1] * j + m[0, 2] * k + m[0, 3] - centre[0]
            y = m[1, 0] * i + m[1, 1] * j + m[1, 2] * k + m[1, 3] - centre[1]
            z = m[2, 0] * i + m[2, 1] * j + m[2, 2] * k + m[2, 3] - centre[2]
            r2 = x * x + y * y + z * z
            decay = fade * np.exp(-np.sqrt(r2) / 90.0)
            acc = 0.0
            for n in range(dirs.shape[0]):
                t = x * dirs[n, 0] + y * dirs[n, 1] + z * dirs[n, 2]
                p2 = max(r2 - t * t, 0.0)
                acc += amps[n] * np.exp(-0.5 * p2 / (widths[n] * widths[n]))
            out[i, j] += acc * decay


def _streaks(slab, frame_from_ijk, k0, metal, rng_seed):
    """Streak artefacts across the slices through dental metal (``metal``: [(centre, radius)] frame RAS):
    bright and dark bands radiating from each piece, fading with distance from it."""
    m = np.ascontiguousarray(frame_from_ijk, np.float64)
    eu, ev = m[:3, 0] / np.linalg.norm(m[:3, 0]), m[:3, 1] / np.linalg.norm(m[:3, 1])
    normal = np.cross(eu, ev)
    normal /= np.linalg.norm(normal)
    for kk in range(slab.shape[2]):
        origin = m[:3, 2] * (k0 + kk) + m[:3, 3]
        for n, (c, r) in enumerate(metal):
            dz = abs(float((origin - c) @ normal))
            if dz >= r + 4.0:
                continue
            rng = np.random.default_rng((rng_seed, n, k0 + kk))
            th = rng.uniform(0, np.pi, 10)
            dirs = np.cos(th)[:, None] * eu + np.sin(th)[:, None] * ev
            amps = rng.choice([-1.0, 1.0], 10) * rng.uniform(400.0, 1500.0, 10)
            out = np.ascontiguousarray(slab[:, :, kk])
            _streak_kernel(out, m, float(k0 + kk), np.asarray(c, np.float64), dirs, amps,
                           rng.uniform(0.6, 1.8, 10), 1.0 - dz / (r + 4.0))
            slab[:, :, kk] = out


# ---- renderer -------------------------------------------------------------------------------------
def render_frame_ct(ras_from_ijk, shape, frame_from_ras, system="leksell", *, clutter: Clutter | None = None,
                    background=None, noise_hu: float = 8.0, rng=None, plates=None, rod_hu=None,
                    rod_radius_mm=None, extra_segments=(), psf_mm: float = 0.0, rod_jitter_mm: float = 0.0,
                    dtype=np.float32, slab_slices: int = 8) -> Volume:
    """CT in HU on the grid (``ras_from_ijk`` 4x4 voxel -> RAS mm, ``shape`` (I, J, K)) showing the
    N-localizer of ``system`` ('leksell', 'crw', 'brw') at the pose ``frame_from_ras`` (4x4, image RAS mm
    -> frame RAS mm, see ``frames.py``).

    ``plates``: which plates (default the system's CT localizer). ``clutter``: a ``Clutter`` (head, vessels,
    dental metal, pins, posts, ring, head holder), or None for rods in air. ``background`` (same grid,
    optional) replaces the analytic head; the clutter's ring, head holder, table and plates fill its air. ``extra_segments``: more capsules (a, b, radius_mm, hu),
    frame RAS. ``psf_mm``: in-plane Gaussian blur (SD, mm) of the scanner's point spread function.
    ``rod_jitter_mm``: each rod end moved by Gaussian noise of this SD (mm, per coordinate), as a real
    localizer departs from its drawing (the pose ``frame_from_ras`` stays that of the nominal model).
    Gaussian noise of ``noise_hu`` SD; ``rng`` seed or Generator. The CT is built ``slab_slices`` slices
    at a time along k; ``dtype`` of the output (int16 as scanners store it).
    """
    system = get_system(system)
    shape = tuple(int(s) for s in shape[:3])
    ras_from_ijk = np.asarray(ras_from_ijk, float)
    frame_from_ras = np.asarray(frame_from_ras, float)
    ras_from_frame = np.linalg.inv(frame_from_ras)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    plates = tuple(system.required_plates if plates is None else plates)
    hu_default, radius_default = ROD_STYLE[system.key]
    rod_hu = hu_default if rod_hu is None else float(rod_hu)
    radius = radius_default if rod_radius_mm is None else float(rod_radius_mm)
    if background is not None:
        background = np.asarray(getattr(background, "data", background))
        if background.shape[:3] != shape:
            raise ValueError(f"background shape {background.shape} differs from the grid {shape}")
    jitter = (lambda p: p + rng.normal(0.0, rod_jitter_mm, 3)) if rod_jitter_mm else (lambda p: p)
    segments = [(apply(ras_from_frame, jitter(a)), apply(ras_from_frame, jitter(b)), radius, rod_hu)
                for name in plates for a, b in system.plates[name].rods()]
    metal, ring_radius, s_bottom = [], 0.0, 0.0
    if clutter is not None:
        caps, metal, ring_radius, s_bottom = clutter_segments(system, clutter, rng)
        segments = [(apply(ras_from_frame, a), apply(ras_from_frame, b), r, hu) for a, b, r, hu in caps] + segments
    segments += [(apply(ras_from_frame, np.asarray(a, float)), apply(ras_from_frame, np.asarray(b, float)), r, hu)
                 for a, b, r, hu in extra_segments]
    frame_from_ijk = frame_from_ras @ ras_from_ijk
    caps = _prepare(segments, ras_from_ijk)
    boxes = plate_boxes(system, plates) if clutter is not None and clutter.plates else np.zeros((0, 13))
    streak_seed = int(rng.integers(1 << 30)) if metal else 0
    hardware = None     # the analytic hardware drawn over a given background (its head is the background's)
    if background is not None and clutter is not None and (clutter.ring or clutter.head_holder or len(boxes)):
        hardware = replace(clutter, head=False)
    out = np.empty(shape, dtype)
    for k0 in range(0, shape[2], slab_slices):
        k1 = min(k0 + slab_slices, shape[2])
        if background is not None:
            slab = np.array(background[:, :, k0:k1], np.float32)
            if hardware is not None:      # ring, head holder, table, plates: only where the background is air
                fixed = np.empty_like(slab)
                _background_slab(fixed, frame_from_ijk, k0, hardware, ring_radius, s_bottom, boxes)
                np.copyto(slab, fixed, where=(fixed > AIR_HU) & (slab < BACKGROUND_AIR_HU))
        else:
            slab = np.empty((shape[0], shape[1], k1 - k0), np.float32)
            _background_slab(slab, frame_from_ijk, k0, clutter, ring_radius, s_bottom, boxes)
        _paint(slab, ras_from_ijk, k0, caps)
        if metal:
            _streaks(slab, frame_from_ijk, k0, metal, streak_seed)
        if psf_mm:
            from scipy.ndimage import gaussian_filter
            pix = np.linalg.norm(ras_from_ijk[:3, :2], axis=0)
            gaussian_filter(slab, (psf_mm / pix[0], psf_mm / pix[1], 0.0), output=slab, mode="nearest")
        if noise_hu and dtype != np.float32:
            slab += np.float32(noise_hu) * rng.standard_normal(slab.shape, dtype=np.float32)
        if np.issubdtype(np.dtype(dtype), np.integer):
            info = np.iinfo(dtype)
            slab = np.clip(np.rint(slab), max(info.min, -1024), info.max)
        out[:, :, k0:k1] = slab
    if noise_hu and dtype == np.float32:      # one draw for the whole volume (reproducible per seed)
        out += np.float32(noise_hu) * rng.standard_normal(shape, dtype=np.float32)
    meta = {"modality": "CT", "units": "HU", "localizer": f"{system.name} N-localizer", "frame_system": system.key,
            "plates": list(plates), "frame_from_ras": frame_from_ras.tolist(),
            "xyz_from_ras": system.native_from_ras(frame_from_ras).tolist()}
    return Volume(out, ras_from_ijk.copy(), "ct", meta)


def render_localizer_ct(ras_from_ijk, shape, xyz_from_ras, head_hu=None, noise_hu=8.0, rng=None,
                        plates=("right", "left", "anterior"), rod_hu=ROD_HU,
                        rod_radius_mm=ROD_RADIUS_MM, pins_xyz=None) -> Volume:
    """Leksell G CT (float32 HU) on the grid ``ras_from_ijk``/``shape`` with the localizer posed by
    ``xyz_from_ras`` (4x4 image RAS mm -> Leksell XYZ mm). ``plates``: any of right, left, anterior,
    posterior (MR boxes). ``head_hu`` (same grid) replaces the air background; ``pins_xyz``: (start, end)
    Leksell XYZ segments drawn as 4 mm metal pins. ``noise_hu`` SD Gaussian noise (``rng`` seed)."""
    frame_from_ras = FRAMERAS_FROM_XYZ @ np.asarray(xyz_from_ras, float)
    extra = [(apply(FRAMERAS_FROM_XYZ, np.asarray(a, float)), apply(FRAMERAS_FROM_XYZ, np.asarray(b, float)),
              2.0, PIN_HU) for a, b in (pins_xyz or [])]
    ct = render_frame_ct(ras_from_ijk, shape, frame_from_ras, "leksell", background=head_hu, noise_hu=noise_hu,
                         rng=rng, plates=plates, rod_hu=rod_hu, rod_radius_mm=rod_radius_mm,
                         extra_segments=extra)
    ct.meta["localizer"] = "Leksell G N-localizer"
    return ct


def frame_pose(angles_deg, shift_mm) -> np.ndarray:
    """frame_from_ras of a frame rotated by ``angles_deg`` (about R, A, S) and shifted by ``shift_mm``
    in the image (the frame's origin sits at ``shift_mm`` image RAS)."""
    image_from_frame = np.eye(4)
    image_from_frame[:3, :3] = rotation_matrix(angles_deg)
    image_from_frame[:3, 3] = shift_mm
    return np.linalg.inv(image_from_frame)


def frame_ct_grid(system, voxel_mm, shape=None, s_range_mm=None, tilt_deg=0.0, margin_mm=25.0):
    """(ras_from_ijk, shape) of an axial CT grid covering ``system``'s localizer (image RAS = frame RAS
    before the pose): in-plane field of view from the rods plus ``margin_mm``; slices over
    ``s_range_mm`` (default the rods' extent + 15 mm); ``shape`` overrides the size (centred);
    ``tilt_deg``: gantry tilt (the slice stack sheared about R)."""
    system = get_system(system)
    pts = np.array([p for plate in system.plates.values() for rod in plate.rods() for p in rod])
    voxel = np.asarray(voxel_mm, float)
    lo, hi = pts.min(0) - margin_mm, pts.max(0) + margin_mm
    if s_range_mm is not None:
        lo[2], hi[2] = s_range_mm
    else:
        lo[2], hi[2] = pts[:, 2].min() - 15.0, pts[:, 2].max() + 15.0
    if shape is None:
        shape = tuple(int(s) for s in np.ceil((hi - lo) / voxel) + 1)
    direction = np.eye(3)
    if tilt_deg:      # gantry tilt: the slices stay axial, the stack shears along A
        direction[:, 2] = [0.0, np.sin(np.radians(tilt_deg)), np.cos(np.radians(tilt_deg))]
    m = ras_from_ijk_matrix(voxel, direction)
    centre = (lo + hi) / 2
    m[:3, 3] = centre - m[:3, :3] @ ((np.array(shape) - 1) / 2)
    return m, tuple(shape)


def analytic_candidates(frame_from_ras, system="leksell", slice_normal_ras=(0.0, 0.0, 1.0), spacing_mm: float = 1.0,
                        plates=None, noise_mm: float = 0.0, rng=None, n_clutter: int = 0, rod_jitter_mm: float = 0.0,
                        rod_offsets_mm=None):
    """Rod candidates as a detector would report them from a CT with slices ``spacing_mm`` apart and
    normal ``slice_normal_ras``: the exact crossings of ``system``'s rods (pose ``frame_from_ras``) with
    every slice plane, moved in-plane by Gaussian noise of ``noise_mm`` SD per coordinate, plus
    ``n_clutter`` random points per slice within the localizer's reach; ``rod_jitter_mm`` moves each rod
    end by Gaussian noise of that SD (a localizer departing from its drawing) and ``rod_offsets_mm``
    {(plate, rod 0 first / 1 diagonal / 2 second): (R, A, S) mm} moves whole rods (frame RAS). Returns a
    ``detection.Candidates``."""
    from .detection import Candidates
    system = get_system(system)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    plates = system.required_plates if plates is None else plates
    ras_from_frame = np.linalg.inv(np.asarray(frame_from_ras, float))
    n = np.asarray(slice_normal_ras, float)
    n = n / np.linalg.norm(n)
    moved = rod_offsets_mm or {}
    rods = [(apply(ras_from_frame, a + moved.get((name, r), 0.0) + rng.normal(0.0, rod_jitter_mm, 3)),
             apply(ras_from_frame, b + moved.get((name, r), 0.0) + rng.normal(0.0, rod_jitter_mm, 3)))
            for name in plates for r, (a, b) in enumerate(system.plates[name].rods())]
    ends = np.array([p for rod in rods for p in rod])
    proj = ends @ n
    offsets = np.arange(np.floor(proj.min()) - 2.0, np.ceil(proj.max()) + 2.0, spacing_mm)
    pts, idx = [], []
    for k, off in enumerate(offsets):
        for a, b in rods:
            den = (b - a) @ n
            if abs(den) < 1e-9:
                continue
            t = (off - a @ n) / den
            if 0.0 <= t <= 1.0:
                pts.append(a + t * (b - a))
                idx.append(k)
        for _ in range(n_clutter):
            q = ends.mean(0) + rng.uniform(-1, 1, 3) * np.ptp(ends, 0) / 2
            pts.append(q + (off - q @ n) * n)
            idx.append(k)
    pts = np.array(pts)
    if noise_mm:
        e = rng.normal(0.0, noise_mm, pts.shape)
        pts = pts + e - (e @ n)[:, None] * n
    return Candidates(pts, np.array(idx, np.int64), np.ones(len(pts)), np.ones(len(pts)), 2, n, float(spacing_mm),
                      len(offsets), float("nan"), offsets)


__all__ = ["Clutter", "render_frame_ct", "render_localizer_ct", "analytic_candidates", "frame_pose",
           "frame_ct_grid"]
