"""The patient's tissues in MNI space: atlases -> labels, χ, R2*, proton density, T1w and CT values.

The "model grid" is an axis-aligned MNI grid (spacing ``h`` = 1 mm, or 2 mm for small patients) large
enough for head and neck. Brain tissue comes from the MNI ICBM152 2009a template (T1, GM and WM
probabilities), deep nuclei from the CIT168 atlas, the thalamus from an ellipsoid, the skull and scalp
from the distance to the intracranial volume, the face/neck and air cavities (sinuses, mastoid) from
ellipsoids, veins from centre lines (``veins.py``). Properties are literature values
(docs/qsm.md) mixed by tissue fraction (partial volume) with smooth random texture.

χ is in ppm relative to water (CSF = 0, air = +9.4); R2* in 1/s at 3 T (scaled for other fields).
"""
from __future__ import annotations

import csv
import functools
from dataclasses import dataclass, field

import numba
import numpy as np
from scipy import ndimage

from .. import ATLAS_DIR

T1_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
GM_FILE = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
WM_FILE = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"
CIT_FILE = "CIT168_subcortex.nii.gz"
CIT_LOOKUP = "CIT168_subcortex_lookup.csv"

MODEL_BOX_MNI = ((-100.0, 100.0), (-135.0, 115.0), (-150.0, 110.0))  # mm, head + neck

CSF, GM, WM, THALAMUS, VEIN, SINUS, SKULL, SCALP = 201, 202, 203, 204, 210, 211, 220, 221
CHI_AIR = 9.4

# value: (name, χ ppm, R2* 1/s at 3 T, proton density, T1w, CT HU)
NUCLEI = {
    1: ("Pu", 0.060, 24.0, 0.78, None, 40.0),
    2: ("Ca", 0.060, 20.0, 0.80, None, 40.0),
    3: ("NAC", 0.040, 20.0, 0.80, None, 38.0),
    4: ("EXA", 0.020, 18.0, 0.82, None, 36.0),
    5: ("GPe", 0.160, 38.0, 0.72, None, 42.0),
    6: ("GPi", 0.200, 42.0, 0.70, None, 42.0),
    7: ("SNc", 0.120, 34.0, 0.74, None, 40.0),
    8: ("RN", 0.110, 32.0, 0.74, None, 40.0),
    9: ("SNr", 0.170, 40.0, 0.72, None, 40.0),
    12: ("VeP", 0.120, 34.0, 0.76, None, 40.0),
    13: ("HN", 0.050, 22.0, 0.80, None, 38.0),
    14: ("HTH", 0.010, 16.0, 0.84, None, 36.0),
    15: ("MN", 0.040, 20.0, 0.82, None, 38.0),
    16: ("STN", 0.090, 30.0, 0.76, None, 40.0),
}
TISSUE = {  # χ ppm, R2* (3 T), PD, T1w (0..1), HU
    "csf": (0.0, 3.0, 1.00, 0.10, 8.0),
    "gm": (0.010, 15.0, 0.86, None, 38.0),
    "wm": (-0.030, 20.0, 0.70, None, 28.0),
    "thalamus": (0.020, 20.0, 0.78, None, 36.0),
    "vein": (0.450, 45.0, 0.80, 0.45, 55.0),
    "sinus": (0.400, 35.0, 0.85, 0.50, 55.0),
    "skull": (-2.000, 400.0, 0.05, 0.30, 1100.0),
    "soft": (0.080, 30.0, 0.90, 0.70, 15.0),     # scalp, face and neck soft tissue (with fat)
    "air": (CHI_AIR, 0.0, 0.0, 0.0, -1000.0),
}

# thalamus: an ellipsoid per side (MNI centre mm, semi-axes mm, rotation about S in degrees)
THALAMUS_ELLIPSOIDS = (((-11.0, -18.0, 7.0), (8.0, 15.0, 9.0), -12.0),
                       ((11.0, -18.0, 7.0), (8.0, 15.0, 9.0), 12.0))
# air cavities outside the intracranial volume (MNI centre, semi-axes)
CAVITIES = (("sphenoid sinus", (0.0, 14.0, -44.0), (13.0, 12.0, 10.0)),
            ("maxillary sinus L", (-30.0, 32.0, -74.0), (12.0, 16.0, 16.0)),
            ("maxillary sinus R", (30.0, 32.0, -74.0), (12.0, 16.0, 16.0)),
            ("nasal cavity", (0.0, 52.0, -62.0), (8.0, 26.0, 16.0)),
            ("mastoid L", (-52.0, -32.0, -46.0), (9.0, 12.0, 10.0)),
            ("mastoid R", (52.0, -32.0, -46.0), (9.0, 12.0, 10.0)))
FRONTAL_SINUS_DIR = (0.0, 0.97, -0.24)   # from the head centre, where the frontal sinus sits in bone
HEAD_CENTRE_MNI = np.array([0.0, -18.0, 10.0])
PINEAL_MNI = (0.0, -31.0, 0.0)
CALCIFICATION = (-0.30, 80.0, 0.5, None, 350.0)   # χ ppm, R2*, PD, (T1w), HU


def label_names() -> dict:
    """{label value: name} for every label the phantom uses (CIT168 values for nuclei)."""
    names = {}
    for v, (n, *_rest) in NUCLEI.items():
        names[v] = f"{n}_L"
        names[v + 100] = f"{n}_R"
    names.update({CSF: "CSF", GM: "GM", WM: "WM", THALAMUS: "Thalamus", VEIN: "Vein", SINUS: "Sinus",
                  SKULL: "Skull", SCALP: "Scalp"})
    names.update({LAMINA: "MedialMedullaryLamina", OPTIC_TRACT: "OpticTract", THIRD_VENTRICLE: "ThirdVentricle"})
    return dict(sorted(names.items()))


def cit168_names() -> dict:
    with open(ATLAS_DIR / CIT_LOOKUP) as f:
        return {int(r["Region_Index"]): r["Region_Name"] for r in csv.DictReader(f)}


@dataclass
class ModelGrid:
    spacing: float
    origin: np.ndarray   # MNI mm of voxel [0, 0, 0]
    shape: tuple

    @property
    def idx_from_mni(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] /= self.spacing
        m[:3, 3] = -self.origin / self.spacing
        return m

    @property
    def mni_from_idx(self) -> np.ndarray:
        return np.linalg.inv(self.idx_from_mni)

    def axes(self):
        return [self.origin[d] + self.spacing * np.arange(self.shape[d]) for d in range(3)]


def model_grid(spacing: float) -> ModelGrid:
    origin = np.array([lo for lo, _ in MODEL_BOX_MNI])
    shape = tuple(int(np.floor((hi - lo) / spacing)) + 1 for lo, hi in MODEL_BOX_MNI)
    return ModelGrid(float(spacing), origin, shape)


def _load(name):
    import nibabel as nib
    img = nib.load(str(ATLAS_DIR / name))
    return np.asanyarray(img.dataobj), img.affine


def _place(arr, affine, grid1: ModelGrid, dtype):
    """Copy a 1 mm axis-aligned MNI image into the 1 mm model canvas (integer offsets)."""
    out = np.zeros(grid1.shape, dtype)
    off = np.round(affine[:3, 3] - grid1.origin).astype(int)
    sl_out, sl_in = [], []
    for d in range(3):
        a = max(off[d], 0)
        b = min(off[d] + arr.shape[d], grid1.shape[d])
        sl_out.append(slice(a, b))
        sl_in.append(slice(a - off[d], b - off[d]))
    out[tuple(sl_out)] = arr[tuple(sl_in)].astype(dtype)
    return out


def _block_mean(a, f: int):
    if f == 1:
        return a
    s = [n // f for n in a.shape]
    a = a[:s[0] * f, :s[1] * f, :s[2] * f]
    return a.reshape(s[0], f, s[1], f, s[2], f).mean(axis=(1, 3, 5), dtype=np.float32)


def _cache_file(spacing: float):
    """Disk cache of the static model (seed-independent), keyed by this module's source and the atlases."""
    import hashlib
    import os
    from pathlib import Path
    root = os.environ.get("QSMPLANNER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "qsmplanner")
    key = hashlib.sha1(Path(__file__).read_bytes())
    for name in (T1_FILE, GM_FILE, WM_FILE, CIT_FILE):
        st = (ATLAS_DIR / name).stat()
        key.update(f"{name}:{st.st_size}".encode())
    return Path(root) / f"phantom_static_{spacing:g}mm_{key.hexdigest()[:12]}.npz"


@functools.lru_cache(maxsize=2)
def static_model(spacing: float) -> dict:
    """``_static_model`` through a disk cache (skipped silently when the cache is not writable)."""
    path = None
    try:
        path = _cache_file(spacing)
        if path.exists():
            with np.load(path) as z:
                out = {k: z[k] for k in z.files if k not in ("origin", "spacing")}
            out["dist_factor"] = int(out["dist_factor"])
            out["grid"] = ModelGrid(float(spacing), np.asarray(model_grid(spacing).origin), out["gm"].shape)
            return out
    except Exception:   # a damaged or unreadable cache is rebuilt
        pass
    out = _static_model(spacing)
    if path is not None:
        try:
            from ..io.atomic import atomic_path
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **{k: v for k, v in out.items() if k != "grid"})
            for old in path.parent.glob(f"phantom_static_{spacing:g}mm_*.npz"):
                if old != path:
                    old.unlink(missing_ok=True)
        except OSError:
            pass
    return out


def _static_model(spacing: float) -> dict:
    """Seed-independent maps on the model grid (cached). Fractions are uint8 (value/255): GM, WM,
    template T1, intracranial volume "icv" and filled brain "brain" (ventricles included, soft edges);
    "cit": CIT168 labels (int16); "dist": signed distance to the ICV surface (mm, + outside) on a
    grid ``dist_factor`` times coarser."""
    f = int(round(spacing))
    if f not in (1, 2, 3, 4) or abs(f - spacing) > 1e-6:
        raise ValueError("model spacing must be 1, 2, 3 or 4 mm")
    grid1 = model_grid(1.0)
    grid = model_grid(spacing)
    t1, aff = _load(T1_FILE)
    gm, _ = _load(GM_FILE)
    wm, _ = _load(WM_FILE)
    cit, caff = _load(CIT_FILE)
    cit = _place(np.rint(cit), caff, grid1, np.int16)

    def down(a):
        a = _block_mean(a, f)[tuple(slice(0, n) for n in grid.shape)]
        return np.pad(a, [(0, n - s) for n, s in zip(grid.shape, a.shape)])

    t1 = down(_place(t1, aff, grid1, np.float32) / 255.0)
    gm = down(_place(gm, aff, grid1, np.float32) / 255.0)
    wm = down(_place(wm, aff, grid1, np.float32) / 255.0)
    lab = cit[::f, ::f, ::f][tuple(slice(0, n) for n in grid.shape)] if f > 1 else cit
    lab = np.pad(lab, [(0, n - s) for n, s in zip(grid.shape, lab.shape)])
    it = max(1, int(round(2 / spacing)))
    icv = ndimage.binary_fill_holes(ndimage.binary_closing(t1 > 0.02, iterations=it))
    brain = ndimage.binary_fill_holes(ndimage.binary_opening((gm + wm) > 0.5) | (lab > 0))
    # cisterns open to the outside (e.g. around the vein of Galen) would leave holes: like a magnitude
    # brain mask, include everything deeper than ~2.5 mm inside the intracranial volume
    brain |= ndimage.binary_erosion(icv, iterations=max(1, int(round(2.5 / spacing))))
    brain &= ndimage.binary_erosion(icv, iterations=1)   # never up to the skull
    u8 = lambda a: np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    out = {"grid": grid, "gm": u8(gm), "wm": u8(wm), "t1": u8(t1), "cit": lab}
    del gm, wm, t1
    # smooth the binary edges by a fraction of a voxel: partial volume at the boundaries
    sig = 0.6 / spacing if f == 1 else 0.45
    out["icv"] = u8(ndimage.gaussian_filter(icv.astype(np.float32), sig))
    out["brain"] = u8(ndimage.gaussian_filter(brain.astype(np.float32), sig))
    # signed distance to the ICV surface on a >= 2 mm grid
    fd = max(1, int(round(2.0 / spacing)))
    coarse = icv[::fd, ::fd, ::fd]
    out["dist"] = ((ndimage.distance_transform_edt(~coarse) - ndimage.distance_transform_edt(coarse))
                   * spacing * fd).astype(np.float32)
    out["dist_factor"] = fd
    return out


def smooth_noise(rng, shape, sigma_vox) -> np.ndarray:
    """Zero-mean unit-SD smooth Gaussian noise of correlation ``sigma_vox`` (voxels), float32."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_vox)
    f -= f.mean()
    f /= f.std() + 1e-12
    return f


def _ellipsoid(grid: ModelGrid, centre, semi, rot_deg=0.0):
    """Soft occupancy of an ellipsoid on the model grid (partial volume over ~1 voxel) and its box."""
    centre, semi = np.asarray(centre, float), np.asarray(semi, float)
    lo = np.floor((centre - semi.max() - 2 * grid.spacing - grid.origin) / grid.spacing).astype(int)
    hi = np.ceil((centre + semi.max() + 2 * grid.spacing - grid.origin) / grid.spacing).astype(int) + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, grid.shape)
    if np.any(hi <= lo):
        return None, None
    ax = [grid.origin[d] + grid.spacing * np.arange(lo[d], hi[d]) - centre[d] for d in range(3)]
    x, y, z = np.meshgrid(*ax, indexing="ij")
    c, s = np.cos(np.deg2rad(rot_deg)), np.sin(np.deg2rad(rot_deg))
    xr, yr = c * x + s * y, -s * x + c * y
    r = np.sqrt((xr / semi[0]) ** 2 + (yr / semi[1]) ** 2 + (z / semi[2]) ** 2)
    dist_mm = (r - 1.0) * semi.min()
    occ = np.clip(0.5 - dist_mm / grid.spacing, 0.0, 1.0).astype(np.float32)
    return occ, tuple(slice(a, b) for a, b in zip(lo, hi))


@dataclass
class PaintedModel:
    grid: ModelGrid
    labels: np.ndarray            # int16
    chi: np.ndarray               # ppm rel. water (air +9.4)
    r2s: np.ndarray               # 1/s at the requested field
    pd: np.ndarray                # proton density (0..1)
    t1w: np.ndarray               # T1-weighted intensity (0..1)
    hu: np.ndarray                # CT Hounsfield units
    brain: np.ndarray             # uint8: filled brain fraction × 255 (ventricles included)
    info: dict = field(default_factory=dict)


DEEP_BOX_MNI = ((-44.0, 44.0), (-58.0, 38.0), (-38.0, 36.0))   # holds every CIT168 nucleus and the thalami
PROPS = ("chi", "r2s", "pd", "t1w", "hu")
_TABLE_ROWS = ("csf", "gm", "wm", "thalamus", "vein", "sinus", "skull", "soft", "air")


@numba.njit(cache=True, inline="always")
def _step(x, h):
    """Inside fraction for a signed distance x (mm, negative inside) over one voxel h."""
    v = 0.5 - x / h
    return 0.0 if v < 0.0 else (1.0 if v > 1.0 else v)


@numba.njit(cache=True, inline="always")
def _tri(a, x, y, z):
    n0, n1, n2 = a.shape
    x = min(max(x, 0.0), n0 - 1.000001)
    y = min(max(y, 0.0), n1 - 1.000001)
    z = min(max(z, 0.0), n2 - 1.000001)
    i, j, k = int(x), int(y), int(z)
    fx, fy, fz = x - i, y - j, z - k
    return ((1 - fx) * ((1 - fy) * ((1 - fz) * a[i, j, k] + fz * a[i, j, k + 1])
                        + fy * ((1 - fz) * a[i, j + 1, k] + fz * a[i, j + 1, k + 1]))
            + fx * ((1 - fy) * ((1 - fz) * a[i + 1, j, k] + fz * a[i + 1, j, k + 1])
                    + fy * ((1 - fz) * a[i + 1, j + 1, k] + fz * a[i + 1, j + 1, k + 1])))


@numba.njit(parallel=True, cache=True)
def _paint_kernel(gm, wm, icv, t1, dist, dist_f, fine, coarse, scalp_n, coarse_f, cav, vein, sinus,
                  deep_off, deep_frac, deep_val, deep_thal, deep_lab, origin, h, tab, r2s_scale,
                  out_val, out_lab):
    ni, nj, nk = gm.shape
    d0, d1, d2 = deep_frac.shape
    inv255 = 1.0 / 255.0
    for i in numba.prange(ni):
        x = origin[0] + h * i
        for j in range(nj):
            y = origin[1] + h * j
            for k in range(nk):
                z = origin[2] + h * k
                g = gm[i, j, k] * inv255
                w = wm[i, j, k] * inv255
                ic = icv[i, j, k] * inv255
                pg = min(g, ic)
                pw = max(min(w, ic - pg), 0.0)
                pc = max(ic - pg - pw, 0.0)
                ds = _tri(dist, i / dist_f, j / dist_f, k / dist_f)
                cn = _tri(coarse, i / coarse_f, j / coarse_f, k / coarse_f)
                sn = _tri(scalp_n, i / coarse_f, j / coarse_f, k / coarse_f)
                fn = fine[i, j, k]
                skull_out = 2.0 + min(max(6.0 + 1.3 * cn, 3.5), 9.0)
                scalp_out = skull_out + min(max(5.0 + 1.2 * sn, 3.0), 8.0)
                head = _step(ds - scalp_out, h)
                nr = np.sqrt((x / 52.0) ** 2 + ((y + 22.0) / 58.0) ** 2)
                neck = _step((nr - 1.0) * 52.0, h) * _step(-(z + 138.0), h) * _step(z + 30.0, h)
                fr = np.sqrt((x / 58.0) ** 2 + ((y - 42.0) / 62.0) ** 2 + ((z + 62.0) / 50.0) ** 2)
                face = _step((fr - 1.0) * 50.0, h)
                head = max(head, max(neck, face))
                skull = _step(ds - skull_out, h) * (1.0 - _step(ds - 2.0, h))   # 2 mm CSF/dura first
                c = cav[i, j, k] * _step(2.0 - ds, h) * head
                soft = max(head - ic, 0.0) * (1.0 - skull)
                soft = min(max(soft - c, 0.0), 1.0)
                skull = skull * (1.0 - c) * head
                outside = min(max(1.0 - ic - soft - skull - c, 0.0), 1.0)
                a, b, cc = i - deep_off[0], j - deep_off[1], k - deep_off[2]
                indeep = 0 <= a < d0 and 0 <= b < d1 and 0 <= cc < d2
                nf = deep_frac[a, b, cc] if indeep else 0.0
                th = deep_thal[a, b, cc] if indeep else 0.0
                rest = 1.0 - nf - th
                ve = vein[i, j, k]
                si = sinus[i, j, k]
                vessel = max(ve, si)
                for p in range(5):
                    if p == 3:   # T1w: the real template inside the ICV
                        val = (t1[i, j, k] * inv255 * ic + soft * tab[7, 3] * (1.0 + 0.25 * cn + 0.1 * sn)
                               + skull * tab[6, 3] * (1.0 + 0.3 * fn))
                        val = val * (1.0 - vessel) + vessel * tab[4, 3] * min(ic + soft, 1.0)
                        out_val[p, i, j, k] = val * (1.0 + 0.02 * fn)
                        continue
                    bv = pg * tab[1, p] + pw * tab[2, p] + pc * tab[0, p]
                    if p == 0:
                        bv += (pg + pw) * (0.008 * fn + 0.006 * cn)
                    val = bv * rest + th * tab[3, p] * ((1.0 + 0.1 * fn) if p == 0 else 1.0)
                    if indeep:
                        val += deep_val[p, a, b, cc]
                    val += soft * tab[7, p] * ((1.0 + 0.15 * cn) if p == 2 else 1.0) + skull * tab[6, p] \
                        + (c + outside) * tab[8, p]
                    val = val * (1.0 - vessel) + ve * tab[4, p] + si * tab[5, p]
                    if p == 1:
                        val = val * r2s_scale + 3.0 * (1.0 - head)
                    elif p == 4:
                        val += skull * 180.0 * fn
                    out_val[p, i, j, k] = val
                lab = 0
                if head > 0.5:
                    lab = 221
                if skull > 0.5:
                    lab = 220
                if c > 0.5:
                    lab = 0
                if ic > 0.5:
                    lab = 201 if (pc >= pg and pc >= pw) else (202 if pg >= pw else 203)
                    if th > 0.5:
                        lab = 204
                if indeep and deep_lab[a, b, cc] > 0:
                    lab = deep_lab[a, b, cc]
                if ve > 0.5:
                    lab = 210
                if si > 0.5:
                    lab = 211
                out_lab[i, j, k] = lab


def paint(spacing: float, rng: np.random.Generator, veins=(), field_t: float = 3.0,
          progress=None) -> PaintedModel:
    """Paint every property on the model grid for one patient (texture and skull thickness from ``rng``;
    ``veins``: list of ``veins.Vein`` in MNI mm)."""
    from .veins import rasterise_veins
    st = static_model(spacing)
    grid = st["grid"]
    h = grid.spacing
    shape = grid.shape
    if progress:
        progress.update(0.05, "painting tissues")
    fine = smooth_noise(rng, shape, 1.0 / h)
    coarse_f = 4.0 / h                      # coarse noise on a 4 mm grid
    cshape = tuple(int(np.ceil(n / coarse_f)) + 2 for n in shape)
    coarse = smooth_noise(rng, cshape, 2.0)
    scalp_n = smooth_noise(rng, cshape, 2.5)

    # air cavities (the kernel keeps them outside the ICV + 2 mm and inside the head)
    cav = np.zeros(shape, np.float32)
    centres = []
    for name, c, s in CAVITIES:
        c = np.asarray(c) + rng.normal(0.0, 2.0, 3)
        s = np.asarray(s) * np.clip(1.0 + rng.normal(0.0, 0.1, 3), 0.8, 1.2)
        occ, sl = _ellipsoid(grid, c, s)
        if occ is not None:
            np.maximum(cav[sl], occ, out=cav[sl])
        centres.append((name, c, s))
    d = np.asarray(FRONTAL_SINUS_DIR) / np.linalg.norm(FRONTAL_SINUS_DIR)
    dist_grid = ModelGrid(h * st["dist_factor"], grid.origin, st["dist"].shape)
    prof = ndimage.map_coordinates(st["dist"], _ray_idx(dist_grid, HEAD_CENTRE_MNI, d, 150.0), order=1)
    r_bone = np.argmax(prof > 4.0) * 0.5
    fc = HEAD_CENTRE_MNI + d * r_bone + np.array([0.0, 0.0, rng.normal(0.0, 2.0)])
    occ, sl = _ellipsoid(grid, fc, np.array([13.0, 5.0, 9.0]) * np.clip(1 + rng.normal(0, 0.15), 0.7, 1.3))
    if occ is not None:
        np.maximum(cav[sl], occ, out=cav[sl])
    if progress:
        progress.update(0.3, "painting nuclei")

    # deep box: CIT168 nuclei (soft masks, textured values) and thalami
    lo = np.clip(np.floor((np.array([a for a, _ in DEEP_BOX_MNI]) - grid.origin) / h), 0, None).astype(int)
    hi = np.minimum(np.ceil((np.array([b for _, b in DEEP_BOX_MNI]) - grid.origin) / h).astype(int) + 1,
                    shape)
    dsl = tuple(slice(a, b) for a, b in zip(lo, hi))
    cit = st["cit"][dsl]
    dshape = cit.shape
    dfine = fine[dsl]
    dcoarse = smooth_noise(rng, dshape, 6.0 / h)
    frac = np.zeros(dshape, np.float32)
    vals = np.zeros((5,) + dshape, np.float32)
    for v in np.unique(cit):
        base = NUCLEI.get(int(v) % 100) if v > 0 else None
        if base is None:
            continue
        idx = np.argwhere(cit == v)
        a0 = np.maximum(idx.min(0) - 3, 0)
        a1 = np.minimum(idx.max(0) + 4, dshape)
        sl = tuple(slice(a, b) for a, b in zip(a0, a1))
        m = ndimage.gaussian_filter((cit[sl] == v).astype(np.float32), 0.5 / h)
        gain = 1.0 + 0.15 * dfine[sl] + 0.08 * dcoarse[sl] + rng.normal(0.0, 0.08)
        frac[sl] += m
        vals[0][sl] += m * base[1] * gain
        vals[1][sl] += m * base[2] * (1.0 + 0.5 * (gain - 1.0))
        vals[2][sl] += m * base[3]
        vals[4][sl] += m * base[5]
    thal = np.zeros(dshape, np.float32)
    dgrid = ModelGrid(h, grid.origin + lo * h, dshape)
    for c, s, rot in THALAMUS_ELLIPSOIDS:
        occ, sl = _ellipsoid(dgrid, np.asarray(c) + rng.normal(0.0, 0.7, 3), s, rot)
        if occ is not None:
            np.maximum(thal[sl], occ, out=thal[sl])
    # pallidal lamina, optic tract, third ventricle (its width from a child generator: the main stream of
    # random numbers, hence every other property of the patient, is unchanged)
    v3_width_mm = float(rng.spawn(1)[0].uniform(*THIRD_VENTRICLE_WIDTH_MM))
    targets = target_structures(cit, dgrid, v3_width_mm)
    carve_target_structures(targets, frac, vals, thal)
    # pineal calcification (common in the elderly): diamagnetic, short T2*, bright on CT; no own label
    calc_info = None
    if rng.uniform() < 0.6:
        centre = np.asarray(PINEAL_MNI) + rng.normal(0.0, 0.8, 3)
        occ, sl = _ellipsoid(dgrid, centre, np.full(3, rng.uniform(1.5, 2.8)))
        if occ is not None:
            occ = occ * (1.0 - np.minimum(frac[sl], 1.0))
            frac[sl] += occ
            for p_, v in enumerate(CALCIFICATION):
                if v is not None:
                    vals[p_][sl] += occ * v
            calc_info = centre.tolist()
    tissue = (st["gm"][dsl].astype(np.float32) + st["wm"][dsl]) / 255.0
    thal *= np.clip(tissue, 0.0, 1.0) * (1.0 - np.minimum(frac, 1.0))
    scale = 1.0 / np.maximum(frac + thal, 1.0)
    frac *= scale
    thal *= scale
    vals *= scale
    deep_lab = np.where(np.isin(cit, [v for v in np.unique(cit) if v > 0 and int(v) % 100 in NUCLEI]),
                        cit, 0).astype(np.int16)
    for value, occ, _props in targets.values():
        deep_lab[occ > 0.5] = value
    t1_img = st["t1"]            # the T1w is the template's: the third ventricle is painted into it
    v3 = targets["third_ventricle"][1]
    if v3.any():
        t1_img = t1_img.copy()
        t1_img[dsl] = np.clip(np.rint(t1_img[dsl] * (1.0 - v3) + v3 * (255.0 * THIRD_VENTRICLE_PROPS[3])),
                              0, 255).astype(np.uint8)
    if progress:
        progress.update(0.5, "painting veins")
    vein, sinus = rasterise_veins(grid, veins)
    if progress:
        progress.update(0.7, "painting properties")
    tab = np.array([[0.0 if v is None else v for v in TISSUE[r]] for r in _TABLE_ROWS], np.float64)
    r2s_scale = 1.0 if field_t == 3.0 else max(0.5, field_t / 3.0) * 0.8 + 0.2
    out_val = np.empty((5,) + shape, np.float32)
    out_lab = np.empty(shape, np.int16)
    _paint_kernel(st["gm"], st["wm"], st["icv"], t1_img, st["dist"], float(st["dist_factor"]), fine,
                  coarse, scalp_n, float(coarse_f), cav, vein, sinus, lo.astype(np.int64), frac, vals, thal,
                  deep_lab, grid.origin.astype(np.float64), float(h), tab, float(r2s_scale), out_val, out_lab)
    info = {"cavities": [(n, c.tolist(), s.tolist()) for n, c, s in centres] + [("frontal sinus", fc.tolist(), [])],
            "pineal_calcification_mni": calc_info,
            "third_ventricle_mni": {"width_mm": v3_width_mm, "y_mm": list(THIRD_VENTRICLE_Y_MNI),
                                    "z_mm": list(THIRD_VENTRICLE_Z_MNI)}}
    return PaintedModel(grid, out_lab, out_val[0], out_val[1], out_val[2], out_val[3], out_val[4],
                        st["brain"], info)


def _ray_idx(grid: ModelGrid, start, direction, length_mm, step_mm=0.5):
    r = np.arange(0.0, length_mm, step_mm)
    pts = np.asarray(start, float) + r[:, None] * np.asarray(direction, float)
    return ((pts - grid.origin) / grid.spacing).T


def ray_surface(grid: ModelGrid, soft: np.ndarray, start, direction, level=0.5, length_mm=150.0) -> float:
    """Distance (mm) from ``start`` along ``direction`` to the outermost crossing of ``soft`` > level."""
    d = np.asarray(direction, float)
    d = d / np.linalg.norm(d)
    prof = ndimage.map_coordinates(soft, _ray_idx(grid, start, d, length_mm), order=1, output=np.float32)
    if soft.dtype == np.uint8:
        level = level * 255.0
    inside = np.nonzero(prof > level)[0]
    return float(inside[-1] * 0.5) if inside.size else 0.0


# ---- Pallidal lamina, optic tract and third ventricle (the GPi and VIM targets) -------------------
# The medial medullary lamina (a thin white-matter sheet between GPe and GPi) darkens the pallidum's
# inner border on QSM; the optic tract runs just below the posteroventral GPi (the GPi target keeps a few
# mm above it); the third ventricle's width sets the VIM's lateral coordinate. Geometry in MNI mm.
LAMINA, OPTIC_TRACT, THIRD_VENTRICLE = 205, 206, 207
LAMINA_THICKNESS_MM = 0.8
# (χ ppm, R2* 1/s at 3 T, PD, T1w, HU) as the NUCLEI rows
LAMINA_PROPS = (-0.030, 20.0, 0.70, None, 28.0)          # myelinated fibres, as white matter
OPTIC_TRACT_PROPS = (-0.040, 22.0, 0.70, None, 28.0)     # a compact myelinated tract
THIRD_VENTRICLE_PROPS = (0.0, 3.0, 1.00, 0.10, 8.0)      # CSF
# left optic tract centre line, from beside the chiasm, under the GPi, to the lateral geniculate body
OPTIC_TRACT_LEFT_MNI = ((-6.0, 4.0, -13.0), (-12.0, 0.0, -12.5), (-16.0, -4.0, -12.5), (-19.0, -8.0, -11.5),
                        (-21.0, -13.0, -10.0), (-22.0, -19.0, -7.5), (-22.0, -24.0, -5.5))
OPTIC_TRACT_RADIUS_MM = 1.5
# third ventricle: a slit between the thalami (and hypothalami), |x| <= width/2, over these y and z; its
# floor rises from the hypothalamus (front) to the aqueduct's entrance above the midbrain (back)
THIRD_VENTRICLE_Y_MNI = (-24.0, 0.5)     # from behind the AC to before the PC
THIRD_VENTRICLE_Z_MNI = (-12.0, 10.0)    # floor at the front, roof
THIRD_VENTRICLE_FLOOR_BACK_MNI = -3.0    # floor at the back (above the red nuclei)
THIRD_VENTRICLE_WIDTH_MM = (4.5, 8.5)    # drawn per patient (adults of DBS age)
HYPOTHALAMUS = (14, 114)                 # the only CIT168 nucleus the ventricle may border and replace


def _ventricle_occupancy(axes_mm, width_mm, h):
    """Soft occupancy (partial volume over one voxel h) of the third ventricle on a grid given by its three
    coordinate axes (MNI mm): |x| <= width/2 between ``THIRD_VENTRICLE_Y_MNI``, below the roof and above a
    floor rising linearly from the front to the back."""
    x, y, z = np.meshgrid(*axes_mm, indexing="ij", sparse=True)
    (y0, y1), (floor_front, roof) = THIRD_VENTRICLE_Y_MNI, THIRD_VENTRICLE_Z_MNI
    floor = floor_front + (y1 - y) / (y1 - y0) * (THIRD_VENTRICLE_FLOOR_BACK_MNI - floor_front)
    d = np.maximum(np.maximum(np.abs(x) - width_mm / 2.0, np.abs(y - (y0 + y1) / 2) - (y1 - y0) / 2),
                   np.maximum(floor - z, z - roof))
    return np.clip(0.5 - d / h, 0.0, 1.0).astype(np.float32)


def _polyline_occupancy(axes_mm, points, radius, h):
    """Soft occupancy of a tube of ``radius`` (mm) around a polyline (MNI mm) on the grid of ``axes_mm``."""
    x, y, z = np.meshgrid(*axes_mm, indexing="ij")
    p = np.stack([x, y, z], -1).astype(np.float32)
    d = np.full(x.shape, np.inf, np.float32)
    pts = np.asarray(points, np.float32)
    for a, b in zip(pts[:-1], pts[1:]):
        ab = b - a
        t = np.clip(((p - a) @ ab) / float(ab @ ab), 0.0, 1.0)
        d = np.minimum(d, np.linalg.norm(p - (a + t[..., None] * ab), axis=-1))
    return np.clip(0.5 - (d - radius) / h, 0.0, 1.0).astype(np.float32)


def lamina_occupancy(cit: np.ndarray, h: float) -> np.ndarray:
    """Soft occupancy of the medial medullary lamina on a CIT168 label grid of spacing ``h`` (mm): a sheet
    ``LAMINA_THICKNESS_MM`` thick centred between the GPe (5/105) and GPi (6/106) voxels, where the two
    lie within 2 mm of each other. Voxels of either segment keep most of their content (<= 0.4 at 1 mm)."""
    gpe, gpi = np.isin(cit, (5, 105)), np.isin(cit, (6, 106))
    out = np.zeros(cit.shape, np.float32)
    if not gpe.any() or not gpi.any():
        return out
    idx = np.argwhere(gpe | gpi)
    box = tuple(slice(max(a - 3, 0), b + 4) for a, b in zip(idx.min(0), idx.max(0)))
    d_gpe = ndimage.distance_transform_edt(~gpe[box]) * h
    d_gpi = ndimage.distance_transform_edt(~gpi[box]) * h
    half_gap = np.abs(d_gpe - d_gpi) / 2.0        # distance to the sheet midway between the two segments
    occ = np.clip(0.5 - (half_gap - LAMINA_THICKNESS_MM / 2.0) / h, 0.0, 1.0)
    pallidal = np.isin(cit[box], (0, 5, 6, 105, 106))     # never into another nucleus
    out[box] = np.where((d_gpe <= 2.0) & (d_gpi <= 2.0) & pallidal, occ, 0.0)
    return out


def target_structures(cit: np.ndarray, grid: ModelGrid, v3_width_mm: float) -> dict:
    """Soft occupancies on ``grid`` (the deep box; ``cit`` its CIT168 labels): {"lamina", "optic_tract",
    "third_ventricle"} -> (label value, occupancy, properties). None of them replaces a CIT168 nucleus
    (the ventricle only the hypothalamus, which forms its lower walls): the nuclei's truth is unchanged."""
    h = grid.spacing
    axes = grid.axes()
    nuclei = cit > 0
    tract = np.maximum(_polyline_occupancy(axes, OPTIC_TRACT_LEFT_MNI, OPTIC_TRACT_RADIUS_MM, h),
                       _polyline_occupancy(axes, np.asarray(OPTIC_TRACT_LEFT_MNI) * [-1.0, 1.0, 1.0],
                                           OPTIC_TRACT_RADIUS_MM, h))
    tract[ndimage.binary_dilation(nuclei)] = 0.0
    v3 = _ventricle_occupancy(axes, v3_width_mm, h)
    v3[nuclei & ~np.isin(cit, HYPOTHALAMUS)] = 0.0     # not dilated: no notch in the walls above the nuclei
    return {"third_ventricle": (THIRD_VENTRICLE, v3, THIRD_VENTRICLE_PROPS),
            "optic_tract": (OPTIC_TRACT, tract, OPTIC_TRACT_PROPS),
            "lamina": (LAMINA, lamina_occupancy(cit, h), LAMINA_PROPS)}


def carve_target_structures(structures: dict, frac, vals, thal) -> None:
    """Replace what lies under each occupancy (nuclei, thalamus, background) by the structure, in place."""
    for _value, occ, props in structures.values():
        keep = 1.0 - occ
        frac *= keep
        vals *= keep
        thal *= keep
        frac += occ
        for p, v in enumerate(props):
            if v is not None:
                vals[p] += occ * v
