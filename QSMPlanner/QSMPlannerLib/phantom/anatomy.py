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


def label_names() -> dict:
    """{label value: name} for every label the phantom uses (CIT168 values for nuclei)."""
    names = {}
    for v, (n, *_rest) in NUCLEI.items():
        names[v] = f"{n}_L"
        names[v + 100] = f"{n}_R"
    names.update({CSF: "CSF", GM: "GM", WM: "WM", THALAMUS: "Thalamus", VEIN: "Vein", SINUS: "Sinus",
                  SKULL: "Skull", SCALP: "Scalp"})
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


@functools.lru_cache(maxsize=2)
def static_model(spacing: float) -> dict:
    """Seed-independent maps on the model grid (cached): GM/WM fractions, intracranial volume (ICV),
    filled brain, CIT168 labels, template T1, signed distance to the ICV surface (mm, + outside)."""
    f = int(round(spacing))
    if f not in (1, 2, 3, 4) or abs(f - spacing) > 1e-6:
        raise ValueError("model spacing must be 1, 2, 3 or 4 mm")
    grid1 = model_grid(1.0)
    t1, aff = _load(T1_FILE)
    gm, _ = _load(GM_FILE)
    wm, _ = _load(WM_FILE)
    cit, caff = _load(CIT_FILE)
    t1 = _place(t1, aff, grid1, np.float32) / 255.0
    gm = _place(gm, aff, grid1, np.float32) / 255.0
    wm = _place(wm, aff, grid1, np.float32) / 255.0
    cit = _place(np.rint(cit), caff, grid1, np.int16)
    icv = ndimage.binary_fill_holes(ndimage.binary_closing(t1 > 0.02, iterations=2))
    brain = ndimage.binary_fill_holes(ndimage.binary_opening((gm + wm) > 0.5, iterations=1) | (cit > 0))
    grid = model_grid(spacing)
    out = {"grid": grid}
    crop = tuple(slice(0, n * f) for n in grid.shape)
    for name, a in (("t1", t1), ("gm", gm), ("wm", wm), ("icv", icv.astype(np.float32)),
                    ("brain", brain.astype(np.float32))):
        a = _block_mean(a, f)[tuple(slice(0, n) for n in grid.shape)]
        pad = [(0, n - s) for n, s in zip(grid.shape, a.shape)]
        out[name] = np.pad(a, pad).astype(np.float32)
    lab = cit[crop][::f, ::f, ::f] if f > 1 else cit
    out["cit"] = np.pad(lab, [(0, n - s) for n, s in zip(grid.shape, lab.shape)])
    # smooth the binary edges by a fraction of a voxel: partial volume at the boundaries
    for name in ("icv", "brain"):
        out[name] = ndimage.gaussian_filter(out[name], 0.6 / spacing * (1 if f == 1 else 0.7))
    icv_bin = out["icv"] > 0.5
    # signed distance to the ICV surface (computed at >= 2 mm, then interpolated)
    fd = max(1, int(round(2.0 / spacing)))
    coarse = icv_bin[::fd, ::fd, ::fd]
    sd = (ndimage.distance_transform_edt(~coarse) - ndimage.distance_transform_edt(coarse)) * spacing * fd
    if fd > 1:
        sd = ndimage.zoom(sd.astype(np.float32), [n / s for n, s in zip(grid.shape, sd.shape)], order=1)
    out["dist"] = sd.astype(np.float32)
    return out


def smooth_noise(rng, shape, sigma_vox, coarse: int = 1) -> np.ndarray:
    """Zero-mean unit-SD smooth Gaussian noise of correlation ``sigma_vox`` (voxels)."""
    if coarse > 1:
        small = [max(2, int(np.ceil(n / coarse))) for n in shape]
        f = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), sigma_vox / coarse)
        f = ndimage.zoom(f, [n / s for n, s in zip(shape, small)], order=1)[:shape[0], :shape[1], :shape[2]]
    else:
        f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return (f - f.mean()) / (f.std() + 1e-12)


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
    brain: np.ndarray             # soft brain fraction (filled: ventricles included)
    info: dict = field(default_factory=dict)


def paint(spacing: float, rng: np.random.Generator, veins=(), field_t: float = 3.0,
          progress=None) -> PaintedModel:
    """Paint every property on the model grid for one patient (texture and skull thickness from ``rng``;
    ``veins``: list of ``veins.Vein`` in MNI mm)."""
    from .veins import rasterise_veins
    st = static_model(spacing)
    grid = st["grid"]
    h = grid.spacing
    shape = grid.shape
    gm, wm, icv, brain, dist = st["gm"], st["wm"], st["icv"], st["brain"], st["dist"]
    if progress:
        progress.update(0.1, "painting tissues")

    # fractions inside the intracranial volume
    pg = np.minimum(gm, icv)
    pw = np.minimum(wm, icv - pg)
    pc = np.clip(icv - pg - pw, 0.0, 1.0)
    fine = smooth_noise(rng, shape, 1.0 / h)
    coarse = smooth_noise(rng, shape, 8.0 / h, coarse=4)

    # extracranial layers: CSF/dura to ~1.5 mm, skull of smoothly varying thickness, scalp, air
    skull_in = 1.0
    skull_out = skull_in + np.clip(6.0 + 1.3 * coarse, 3.5, 9.0)
    scalp_out = skull_out + np.clip(5.0 + 1.2 * smooth_noise(rng, shape, 10.0 / h, coarse=4), 3.0, 8.0)
    step = lambda x: np.clip(0.5 - x / h, 0.0, 1.0)  # inside fraction for a signed distance x (mm)
    head = step(dist - scalp_out)
    mni = [a for a in grid.axes()]
    # neck: elliptic cylinder under the skull base, rounded at the bottom; face block
    x, y = np.meshgrid(mni[0], mni[1], indexing="ij")
    neck_r = np.sqrt((x / 52.0) ** 2 + ((y + 22.0) / 58.0) ** 2)
    z = mni[2]
    neck = step((neck_r[..., None] - 1.0) * 52.0) * step(-(z + 138.0))[None, None, :]
    neck = neck * step(z + 30.0)[None, None, :]  # only below z = -30 mm
    face, fsl = _ellipsoid(grid, (0.0, 42.0, -62.0), (58.0, 62.0, 50.0))
    head = np.maximum(head, neck.astype(np.float32))
    if face is not None:
        head[fsl] = np.maximum(head[fsl], face)
    skull = step(dist - skull_out) * (1.0 - step(dist - skull_in))
    # air cavities (outside ICV + 2 mm)
    cav = np.zeros(shape, np.float32)
    centres = []
    for name, c, s in CAVITIES:
        c = np.asarray(c) + rng.normal(0.0, 2.0, 3)
        s = np.asarray(s) * np.clip(1.0 + rng.normal(0.0, 0.1, 3), 0.8, 1.2)
        occ, sl = _ellipsoid(grid, c, s)
        if occ is not None:
            cav[sl] = np.maximum(cav[sl], occ)
        centres.append((name, c, s))
    # frontal sinus: inside the frontal bone
    d = np.asarray(FRONTAL_SINUS_DIR) / np.linalg.norm(FRONTAL_SINUS_DIR)
    prof = ndimage.map_coordinates(dist, _ray_idx(grid, HEAD_CENTRE_MNI, d, 150.0), order=1)
    r_bone = np.argmax(prof > 4.0) * 0.5
    fc = HEAD_CENTRE_MNI + d * r_bone + np.array([0.0, 0.0, rng.normal(0.0, 2.0)])
    occ, sl = _ellipsoid(grid, fc, np.array([13.0, 5.0, 9.0]) * np.clip(1 + rng.normal(0, 0.15), 0.7, 1.3))
    if occ is not None:
        cav[sl] = np.maximum(cav[sl], occ)
    cav *= step(2.0 - dist)  # never inside the intracranial volume
    cav *= head
    if progress:
        progress.update(0.4, "painting nuclei")

    # nuclei (CIT168) and thalamus: soft masks, texture, values
    cit = st["cit"]
    nuc_frac = np.zeros(shape, np.float32)
    nuc_vals = {k: np.zeros(shape, np.float32) for k in ("chi", "r2s", "pd", "hu")}
    sigma_pv = 0.5 / h
    for v in np.unique(cit):
        if v == 0:
            continue
        base = NUCLEI.get(int(v) % 100)
        if base is None:
            continue
        idx = np.argwhere(cit == v)
        lo = np.maximum(idx.min(0) - 3, 0)
        hi = np.minimum(idx.max(0) + 4, shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        m = ndimage.gaussian_filter((cit[sl] == v).astype(np.float32), sigma_pv)
        gain = 1.0 + 0.15 * fine[sl] + 0.08 * coarse[sl] + rng.normal(0.0, 0.08)
        nuc_frac[sl] += m
        nuc_vals["chi"][sl] += m * base[1] * gain
        nuc_vals["r2s"][sl] += m * base[2] * (1.0 + 0.5 * (gain - 1.0))
        nuc_vals["pd"][sl] += m * base[3]
        nuc_vals["hu"][sl] += m * base[5]
    thal = np.zeros(shape, np.float32)
    for c, s, rot in THALAMUS_ELLIPSOIDS:
        occ, sl = _ellipsoid(grid, np.asarray(c) + rng.normal(0.0, 0.7, 3), s, rot)
        if occ is not None:
            thal[sl] = np.maximum(thal[sl], occ)
    thal *= np.clip(pg + pw, 0.0, 1.0) * (1.0 - np.minimum(nuc_frac, 1.0))
    over = np.maximum(nuc_frac + thal, 1.0)
    nuc_scale = 1.0 / over
    nuc_frac *= nuc_scale
    thal *= nuc_scale
    for key in nuc_vals:
        nuc_vals[key] *= nuc_scale
    rest = 1.0 - nuc_frac - thal

    def mix(i, textured=True):
        """Brain value of property ``i`` (0 χ, 1 R2*, 2 PD, 4 HU) by tissue fraction."""
        g, w_, c = TISSUE["gm"][i], TISSUE["wm"][i], TISSUE["csf"][i]
        val = pg * g + pw * w_ + pc * c
        if textured and i == 0:
            val = val + (pg + pw) * (0.008 * fine + 0.006 * coarse)
        return val

    if progress:
        progress.update(0.6, "painting veins")
    vein, sinus = rasterise_veins(grid, veins)
    vessel = np.maximum(vein, sinus)
    soft_tissue = np.clip(head - icv, 0.0, 1.0) * (1.0 - skull)
    soft_tissue = np.clip(soft_tissue - cav, 0.0, 1.0)
    skull = skull * (1.0 - cav) * head
    fields = {}
    for key, i in (("chi", 0), ("r2s", 1), ("pd", 2), ("hu", 4)):
        brainval = (mix(i) * rest + nuc_vals[key] * 1.0 + thal * TISSUE["thalamus"][i]
                    * (1.0 + (0.1 * fine if i == 0 else 0.0)))
        # brainval is per unit intracranial fraction: fractions pg+pw+pc = icv
        tissue = brainval + soft_tissue * TISSUE["soft"][i] + skull * TISSUE["skull"][i] \
            + cav * TISSUE["air"][i]
        outside = np.clip(1.0 - icv - soft_tissue - skull - cav, 0.0, 1.0)
        tissue = tissue + outside * TISSUE["air"][i]
        tissue = tissue * (1.0 - vessel) + vein * TISSUE["vein"][i] + sinus * TISSUE["sinus"][i]
        fields[key] = tissue.astype(np.float32)
    # R2* scales roughly with the field strength (iron- and susceptibility-driven)
    if field_t != 3.0:
        fields["r2s"] *= np.float32(max(0.5, field_t / 3.0) * 0.8 + 0.2)
    fields["r2s"] += np.float32(3.0) * (1.0 - head)  # (no signal in air anyway)
    # skull: diploe texture in CT
    fields["hu"] += (skull * 180.0 * fine).astype(np.float32)
    # T1-weighted: the real template inside the ICV, fat-bright scalp, dark skull, dark air
    t1w = st["t1"] * icv + (soft_tissue * TISSUE["soft"][3] + skull * TISSUE["skull"][3])
    t1w = t1w * (1.0 - vessel) + vessel * TISSUE["vein"][3] * np.minimum(icv + soft_tissue, 1.0)
    t1w = (t1w * (1.0 + 0.02 * fine)).astype(np.float32)

    # labels
    labels = np.zeros(shape, np.int16)
    labels[head > 0.5] = SCALP
    labels[skull > 0.5] = SKULL
    labels[cav > 0.5] = 0
    inside = icv > 0.5
    tis = np.argmax(np.stack([pc, pg, pw]), axis=0)
    labels[inside] = np.array([CSF, GM, WM], np.int16)[tis[inside]]
    labels[(thal > 0.5) & inside] = THALAMUS
    known = np.isin(cit, [v for v in np.unique(cit) if int(v) % 100 in NUCLEI and v > 0])
    labels[known] = cit[known]
    labels[vein > 0.5] = VEIN
    labels[sinus > 0.5] = SINUS
    info = {"cavities": [(n, c.tolist(), s.tolist()) for n, c, s in centres] + [("frontal sinus", fc.tolist(), [])]}
    return PaintedModel(grid, labels, fields["chi"], fields["r2s"], fields["pd"], t1w, fields["hu"],
                        brain.astype(np.float32), info)


def _ray_idx(grid: ModelGrid, start, direction, length_mm, step_mm=0.5):
    r = np.arange(0.0, length_mm, step_mm)
    pts = np.asarray(start, float) + r[:, None] * np.asarray(direction, float)
    return ((pts - grid.origin) / grid.spacing).T


def ray_surface(grid: ModelGrid, soft: np.ndarray, start, direction, level=0.5, length_mm=150.0) -> float:
    """Distance (mm) from ``start`` along ``direction`` to the outermost crossing of ``soft`` > level."""
    d = np.asarray(direction, float)
    d = d / np.linalg.norm(d)
    prof = ndimage.map_coordinates(soft, _ray_idx(grid, start, d, length_mm), order=1)
    inside = np.nonzero(prof > level)[0]
    return float(inside[-1] * 0.5) if inside.size else 0.0
