"""``reconstruct_qsm``: raw multi-echo GRE -> chi (ppm) on the GRE grid, consensus pipeline.

Stages: checks -> brain mask (magnitude, then phase quality) -> MCPC-3D-S offset removal + exact
unwrapping + magnitude/TE-weighted echo fit (total field, Hz and ppm) -> background field removal
(V-SHARP / RESHARP / PDF) -> dipole inversion (TV-ADMM / TKD) with B0 in the voxel frame ->
referencing to the whole-brain mean.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, ProcessingError
from ..progress import as_progress
from ..volume import Volume

BFR_METHODS = ("vsharp", "pdf", "lbv", "resharp")
# alternating background fits and TV passes share about the iteration budget of one converged TV
# solve (40); the refit passes start from the chi found so far
TV_ITERATIONS_FIRST_PASS = 16
TV_ITERATIONS_REFIT = 12
INVERSION_METHODS = ("tkd", "tv")
UNWRAP_METHODS = ("romeo", "laplacian")


@dataclass
class QSMResult:
    chi_ppm: Volume                 # susceptibility (ppm), referenced to the whole-brain mean, GRE grid
    mask: Volume                    # mask chi is defined on (uint8)
    total_field_ppm: Volume         # echo-combined total field (ppm of B0)
    local_field_ppm: Volume         # after background removal (ppm)
    timings: dict = field(default_factory=dict)   # stage -> seconds
    messages: list = field(default_factory=list)  # human-readable notes and warnings
    total_field_hz: Volume | None = None
    noise_hz: Volume | None = None  # expected field noise (Hz, 1 sd) from the magnitude
    brain_mask: Volume | None = None  # mask before background removal (magnitude + phase quality)


def check_gre(gre) -> None:
    """Reject inputs the pipeline cannot interpret (``InputError``, CLI exit 2)."""
    mag, ph = np.asarray(gre.magnitude), np.asarray(gre.phase_rad)
    src = getattr(gre, "source", None) or None
    if mag.ndim != 4 or ph.ndim != 4:
        raise InputError(f"magnitude and phase must be 4-D (I,J,K,echoes), got {mag.shape} and "
                         f"{ph.shape}", src)
    if mag.shape != ph.shape:
        raise InputError(f"magnitude {mag.shape} and phase {ph.shape} have different shapes "
                         f"(echoes of different geometry?)", src)
    te = np.asarray(gre.te_s, float).ravel()
    if te.size != mag.shape[3]:
        raise InputError(f"{te.size} echo times for {mag.shape[3]} echoes", src)
    if not np.all(np.isfinite(te)) or np.any(te <= 0):
        raise InputError(f"echo times must be positive seconds, got {te.tolist()}", src)
    if np.any(np.diff(te) <= 0):
        raise InputError(f"echo times must be strictly increasing, got {te.tolist()}", src)
    if te.max() > 1.0:
        raise InputError(f"echo times look like milliseconds ({te.tolist()}); give seconds", src)
    if not np.isfinite(gre.b0_tesla) or not 0.1 <= float(gre.b0_tesla) <= 20:
        raise InputError(f"field strength {gre.b0_tesla} T is not plausible", src)
    b = np.asarray(gre.b0_dir_ijk, float).ravel()
    if b.size != 3 or not np.all(np.isfinite(b)) or np.linalg.norm(b) < 1e-6:
        raise InputError(f"B0 direction must be a non-zero 3-vector, got {b.tolist()}", src)
    if np.isnan(ph).all():
        raise InputError("phase has no finite value", src)
    lo, hi = float(np.nanmin(ph)), float(np.nanmax(ph))  # NaN voxels ignored, infinities rejected
    if lo < -np.pi - 1e-3 or hi > np.pi + 1e-3:
        raise InputError(f"phase range [{lo:.4g}, {hi:.4g}] is not radians in [-pi, pi): cannot "
                         "interpret it", src)
    if hi - lo < 0.5:
        raise InputError(f"phase range [{lo:.4g}, {hi:.4g}] spans far less than 2*pi: unscaled or "
                         "filtered phase cannot be interpreted", src)


def _finite_float32(a) -> np.ndarray:
    """``a`` as float32 with NaN set to 0; a read-only view of the input when nothing changes (no copy
    of the 4-D echoes, and the input cannot be modified)."""
    a = np.asarray(a, np.float32)
    if not np.isfinite(a).all():
        return np.nan_to_num(a)
    a = a.view()
    a.flags.writeable = False
    return a


def _as_mask(mask, shape, ras_from_ijk) -> np.ndarray:
    if isinstance(mask, Volume):
        if mask.shape3 != tuple(shape) or not np.allclose(mask.ras_from_ijk, ras_from_ijk, atol=1e-3):
            raise InputError(f"mask geometry {mask.shape3} does not match the GRE {tuple(shape)}",
                             mask.name or None)
        m = np.asarray(mask.data)
    else:
        m = np.asarray(mask)
        if m.shape[:3] != tuple(shape):
            raise InputError(f"mask shape {m.shape} does not match the GRE {tuple(shape)}")
    m = np.nan_to_num(m.reshape(shape) if m.ndim > 3 else m) > 0
    if not m.any():
        raise InputError("the mask has no voxels", getattr(mask, "name", None) or None)
    return m


def reconstruct_qsm(gre, mask: Volume | None = None, bfr: str = "pdf", inversion: str = "tv",
                    progress=None, keep_dir=None, unwrap: str = "romeo", tv_lambda: float | None = None,
                    reference: str = "mean", bfr_passes: int = 2) -> QSMResult:
    """QSM from a ``MultiEchoGRE`` (phase in rad, TE in s, B0 direction in the voxel frame).

    ``mask``: optional brain mask Volume on the GRE grid (else computed from the magnitude).
    ``bfr``: "vsharp" | "resharp" | "pdf" | "lbv"; ``inversion``: "tv" (ADMM) | "tkd";
    ``unwrap``: "romeo" (exact, quality-guided) | "laplacian" (per echo, then fit; not exact);
    ``keep_dir``: write intermediates (NIfTI) there. ``reference``: "mean" (whole brain) | "csf".
    ``bfr_passes`` (PDF only): > 1 alternates background fit and inversion: the background is fitted
    again after the field of the chi found so far (CG started from the earlier background sources),
    and the inversion restarts from that chi, at most 16 TV iterations in the first pass and 12 in
    the later ones (closer deep-nuclei values and lower NRMSE). Each refit TV pass is a Bregman step: its data is the refitted local
    field plus the residual the earlier chi left in it (contrast lost to TV restored).
    TV fits the local field inside the mask only (the field outside it is unknown, not 0), and, with
    the magnitude-derived mask, only where the field noise is at most 5 x its median (``reliable_field``);
    PDF weighs the field the same way. The magnitude mask is grown into signal dropouts deep inside the
    head (``extend_into_dropouts``).
    Returns ``QSMResult`` (chi in ppm on the GRE grid, referenced as ``reference``).
    """
    from .dipole import hz_to_ppm
    from .echo import _noise_sigma, combine_echoes
    from .mask import brain_mask, extend_into_dropouts, quality_mask, reliable_field

    if bfr not in BFR_METHODS:
        raise InputError(f"unknown background removal {bfr!r} (choose from {', '.join(BFR_METHODS)})")
    if inversion not in INVERSION_METHODS:
        raise InputError(f"unknown inversion {inversion!r} (choose from {', '.join(INVERSION_METHODS)})")
    if reference not in ("mean", "csf"):
        raise InputError(f"unknown reference {reference!r} (choose mean or csf)")
    if unwrap not in UNWRAP_METHODS:
        raise InputError(f"unknown unwrapping {unwrap!r} (choose from {', '.join(UNWRAP_METHODS)})")
    check_gre(gre)
    prog = as_progress(progress)
    timings, messages = {}, list(getattr(gre, "warnings", []) or [])
    affine = np.asarray(gre.ras_from_ijk, float)
    vox = np.linalg.norm(affine[:3, :3], axis=0)
    b0_dir = np.asarray(gre.b0_dir_ijk, float)
    b0_dir = b0_dir / np.linalg.norm(b0_dir)
    te = np.asarray(gre.te_s, float)
    mag, ph = _finite_float32(gre.magnitude), _finite_float32(gre.phase_rad)
    shape = mag.shape[:3]
    rss = np.sqrt(np.einsum("...e,...e->...", mag, mag))  # magnitude over the echoes: mask and TV prior

    def vol(a, name):
        return Volume(np.asarray(a), affine.copy(), name)

    def keep(a, name):
        if keep_dir is not None:
            from ..io.volumes import write_volume
            Path(keep_dir).mkdir(parents=True, exist_ok=True)
            write_volume(vol(a, name), Path(keep_dir) / f"{name}.nii.gz")

    t = time.perf_counter()
    prog.update(0.0, "brain mask")
    if mask is not None:
        m = _as_mask(mask, shape, affine)
    else:
        m = brain_mask(rss, vox)
        if not m.any():
            raise ProcessingError("no brain found in the magnitude (empty mask)")
        # signal dropouts deep inside the head (receive coils cancelling) belong to the brain
        n_magnitude = int(m.sum())
        m = extend_into_dropouts(m, rss, _noise_sigma(mag[..., 0], m) * np.sqrt(mag.shape[3]), vox)
        if m.sum() > n_magnitude:
            messages.append(f"brain mask grown into signal dropouts inside the head: {int(m.sum()) - n_magnitude} "
                            f"voxels (+{100.0 * (m.sum() / n_magnitude - 1):.1f} %)")
    timings["mask"] = time.perf_counter() - t
    keep(m.astype(np.uint8), "mask_magnitude")

    t = time.perf_counter()
    prog.update(0.05, "echo combination")
    data_mask = None   # voxels whose field enters the data terms (None: the whole mask)
    if unwrap == "romeo":
        fit = combine_echoes(mag, ph, te, m, vox)
        field_hz, noise_hz = fit.field_hz, fit.noise_hz
        if mask is None:
            m2 = quality_mask(m, fit.residual_rad)
            if m2.sum() > 0.5 * m.sum():
                m = m2
            else:
                messages.append("phase-quality masking would remove half the brain: skipped")
        keep(fit.residual_rad, "fit_residual_rad")
        data_mask = reliable_field(noise_hz, m)
        messages.append(f"{100.0 * (1 - data_mask.sum() / max(int(m.sum()), 1)):.1f} % of the mask voxels have a "
                        "field noise > 5 x the median: left out of the data terms")
    else:
        from .unwrap import laplacian_unwrap
        unwrapped = np.stack([laplacian_unwrap(ph[..., e], vox) for e in range(ph.shape[3])], axis=3)
        w = mag ** 2
        field_hz = ((w * te * unwrapped).sum(3) / np.maximum((w * te ** 2).sum(3), 1e-30)
                    / (2 * np.pi)).astype(np.float32)
        noise_hz = None
        if ph.shape[3] > 1:  # the phase offset is not removed: weighted fit of slope and intercept
            wsum = np.maximum(w.sum(3), 1e-30)
            wt = (w * te).sum(3) / wsum
            wp = (w * unwrapped).sum(3) / wsum
            field_hz = ((w * (te - wt[..., None]) * (unwrapped - wp[..., None])).sum(3)
                        / np.maximum((w * (te - wt[..., None]) ** 2).sum(3), 1e-30)
                        / (2 * np.pi)).astype(np.float32)
    timings["field"] = time.perf_counter() - t
    total_ppm = hz_to_ppm(field_hz, gre.b0_tesla).astype(np.float32)
    total_ppm = np.where(m, total_ppm - np.float32(np.median(total_ppm[m])), 0).astype(np.float32)
    keep(field_hz * m, "total_field_hz")
    keep(total_ppm, "total_field_ppm")
    prog.check()

    local, m_local, chi = _field_to_chi(
        total_ppm, m, vox, b0_dir, bfr=bfr, inversion=inversion, magnitude=rss, tv_lambda=tv_lambda,
        bfr_passes=bfr_passes, reference=reference, csf_from=(mag, te), prog=prog, timings=timings,
        messages=messages, keep=keep, data_mask=data_mask)
    timings["total"] = sum(timings.values())
    prog.update(1.0, "done")
    return QSMResult(vol(chi, "QSM"), vol(m_local.astype(np.uint8), "qsm_mask"),
                     vol(total_ppm, "total_field_ppm"), vol(local, "local_field_ppm"), timings,
                     messages, vol(np.where(m, field_hz, 0).astype(np.float32), "total_field_hz"),
                     None if noise_hz is None else vol(noise_hz, "field_noise_hz"),
                     vol(m.astype(np.uint8), "brain_mask"))


def _field_to_chi(field_ppm, m, vox, b0_dir, *, bfr, inversion, magnitude, tv_lambda, bfr_passes,
                  reference, csf_from, prog, timings, messages, keep, local_given=False, data_mask=None):
    """Background removal (skipped when ``local_given``) + dipole inversion + referencing, on the
    mask's bounding box. ``data_mask``: the voxels whose field is trusted (PDF weight 1, else 0; TV data
    term), None for the whole mask. ``magnitude``: TV edge prior or None. ``csf_from``: (echo magnitudes, TEs)
    for a CSF reference, or None. Returns (local field ppm, mask of chi, chi ppm)."""
    from . import bgremove, inversion as inv_mod
    from ..volume import mask_box
    shape = m.shape
    box = mask_box(m, 2)
    mb, fb = m[box], field_ppm[box]
    db = None if data_mask is None else data_mask[box] & mb
    wb = None if db is None else db.astype(np.float32)
    t = time.perf_counter()
    pdf_fit = None
    if local_given:
        local_b, m_local_b = fb, mb
    else:
        prog.update(0.35, f"background removal ({bfr})")
        if bfr == "vsharp":
            local_b, m_local_b = bgremove.vsharp(fb, mb, vox)
        elif bfr == "resharp":
            local_b, m_local_b = bgremove.resharp(fb, mb, vox)
        elif bfr == "pdf":
            pdf_fit = bgremove.pdf_fit(fb, mb, vox, b0_dir, weight=wb)
            local_b, m_local_b = pdf_fit.local, pdf_fit.mask
        else:
            local_b, m_local_b = bgremove.lbv(fb, mb, vox)
        if not m_local_b.any():
            raise ProcessingError("background removal left no voxel (mask too small for the kernel)")
    local = np.zeros(shape, np.float32)
    m_local = np.zeros(shape, bool)
    local[box], m_local[box] = local_b, m_local_b
    timings["bfr"] = time.perf_counter() - t
    if not local_given:
        keep(local, "local_field_ppm")
    prog.check()

    t = time.perf_counter()
    prog.update(0.6, f"dipole inversion ({inversion})")
    chi = np.zeros(shape, np.float32)
    # PDF refits the background between passes; a given local field gets the same Bregman passes
    n_passes = max(1, int(bfr_passes)) if (pdf_fit is not None or (local_given and inversion == "tv")) else 1
    sources = pdf_fit.sources if (n_passes > 1 and pdf_fit is not None) else None
    tv_iter = 40 if n_passes == 1 else TV_ITERATIONS_FIRST_PASS
    timings["inversion"] = 0.0
    mag_b = magnitude[box] if (inversion != "tkd" and magnitude is not None) else None
    # the TV edge weights, once for all passes (the mask does not change between them)
    edges = inv_mod.magnitude_edge_weights(mag_b, m_local_b, vox) if mag_b is not None else None
    data_b = local_b
    for n in range(n_passes):
        if n and local_given:  # Bregman step on the given field: what chi leaves unexplained added back
            from .dipole import forward_field
            t = time.perf_counter()
            residual = np.where(m_local_b, local_b - forward_field(chi[box], vox, b0_dir, pad=(8, 8, 8)), 0)
            data_b = (data_b + residual).astype(np.float32)
        elif n:  # background again, after the field of the chi found so far
            t = time.perf_counter()
            prog.update(0.6, f"background removal ({bfr}), pass {n + 1}")
            # from the earlier background sources, to a tight tolerance: the Bregman step below adds
            # back whatever background the refit leaves
            pdf_fit = bgremove.pdf_fit(fb, mb, vox, b0_dir, weight=wb, chi_local=chi[box], sources0=sources,
                                       tol=2e-3)
            local_b, m_local_b, sources = pdf_fit.local, pdf_fit.mask, pdf_fit.sources
            local[box] = local_b
            # Bregman step (Osher et al. 2005) for TV: the residual of the chi so far is added back
            # to the data, which restores the contrast the TV penalty took
            data_b = local_b + pdf_fit.residual
            timings["bfr"] += time.perf_counter() - t
            t = time.perf_counter()
        else:
            data_b = local_b
        if inversion == "tkd":
            chi[box] = inv_mod.tkd(local_b, m_local_b, vox, b0_dir)
        else:
            sub = prog.sub(0.6 + 0.38 * n / n_passes, 0.6 + 0.38 * (n + 1) / n_passes)
            chi[box], tv_iterations = inv_mod.tv_admm_fit(data_b, m_local_b, vox, b0_dir, lam=tv_lambda,
                                                          progress=sub, edge_weights=edges,
                                                          chi0=chi[box] if n else None,
                                                          max_iter=TV_ITERATIONS_REFIT if n else tv_iter,
                                                          fit_in_mask=True, data_mask=db)
            messages.append(f"TV-ADMM: {tv_iterations} iterations")
        timings["inversion"] += time.perf_counter() - t
    if n_passes > 1:
        keep(local, "local_field_ppm_final")

    ref_mask = m_local
    if reference == "csf":
        from .reference import csf_mask
        ref_mask = csf_mask(csf_from[0], csf_from[1], m_local) if csf_from is not None else m_local
        if ref_mask.sum() < 20:
            messages.append("too few CSF voxels for a CSF reference (or no magnitude): whole-brain "
                            "mean used")
            ref_mask = m_local
    ref_value = float(np.mean(chi[ref_mask]))
    chi = np.where(m_local, chi - np.float32(ref_value), 0).astype(np.float32)
    messages.append(f"chi referenced to the {'CSF' if ref_mask is not m_local else 'whole-brain'} "
                    f"mean ({ref_value:+.4f} ppm removed)")
    keep(chi, "chi_ppm")
    return local, m_local, chi


FIELD_KINDS = ("local", "total")


def reconstruct_from_field(field_ppm: Volume, mask: Volume, kind: str = "local", b0_dir_ijk=None,
                           bfr: str = "pdf", inversion: str = "tv", magnitude: Volume | None = None,
                           progress=None, keep_dir=None, tv_lambda: float | None = None,
                           bfr_passes: int = 2) -> QSMResult:
    """chi (ppm) from a field map in ppm of B0 on its own grid (SEPIA/QSMxT-style entry points).

    ``kind``: "local" (tissue field: dipole inversion only) or "total" (background not removed:
    background removal ``bfr`` first; a scanner B0 map converted to ppm is one). ``mask``: the
    region where the field is valid (required: there is no magnitude to compute it from).
    ``b0_dir_ijk``: unit B0 direction in the voxel frame (default: from the field's direction matrix).
    ``magnitude``: optional TV edge prior on the same grid. TV runs ``bfr_passes`` passes: for a total
    field with PDF, background refits between them (as ``reconstruct_qsm``); for a local field, Bregman
    steps (the part of the field the chi so far leaves unexplained is added back to the data).
    Returns ``QSMResult`` (chi referenced to the mean in its mask). ``InputError`` for unknown methods, a mask on another grid, a field that is
    not finite in the mask.
    """
    from ..io.gre import b0_dir_from_geometry
    if kind not in FIELD_KINDS:
        raise InputError(f"unknown field kind {kind!r} (choose local or total)")
    if bfr not in BFR_METHODS:
        raise InputError(f"unknown background removal {bfr!r} (choose from {', '.join(BFR_METHODS)})")
    if inversion not in INVERSION_METHODS:
        raise InputError(f"unknown inversion {inversion!r} (choose from {', '.join(INVERSION_METHODS)})")
    if mask is None:
        raise InputError(f"a {kind} field needs a mask (there is no magnitude to compute one from)")
    prog = as_progress(progress)
    affine = np.asarray(field_ppm.ras_from_ijk, float)
    data = np.asarray(field_ppm.data, np.float32)
    if data.ndim != 3:
        raise InputError(f"a field map must be 3-D, got shape {data.shape}", field_ppm.name or None)
    shape = data.shape
    m = _as_mask(mask, shape, affine)
    if not np.isfinite(data[m]).all():
        raise InputError(f"{int((~np.isfinite(data[m])).sum())} mask voxels of the field are NaN or Inf",
                         field_ppm.name or None)
    vox = np.linalg.norm(affine[:3, :3], axis=0)
    b0_dir = b0_dir_from_geometry(affine) if b0_dir_ijk is None else np.asarray(b0_dir_ijk, float)
    if b0_dir.shape != (3,) or not np.isfinite(b0_dir).all() or np.linalg.norm(b0_dir) < 1e-6:
        raise InputError(f"B0 direction must be a non-zero 3-vector, got {np.ravel(b0_dir).tolist()}")
    b0_dir = b0_dir / np.linalg.norm(b0_dir)
    mag = None
    if magnitude is not None:
        if magnitude.shape3 != shape or not np.allclose(magnitude.ras_from_ijk, affine, atol=1e-3):
            raise InputError(f"magnitude grid {magnitude.shape3} does not match the field {shape}",
                             magnitude.name or None)
        mag = np.asarray(magnitude.data, np.float32)
    timings, messages = {}, [f"{kind} field input; B0 direction (voxel frame) "
                             f"{np.round(b0_dir, 4).tolist()}"]
    field = np.where(m, data - np.float32(np.median(data[m])) if kind == "total" else data, 0)
    field = field.astype(np.float32)

    def keep(a, name):
        if keep_dir is not None:
            from ..io.volumes import write_volume
            Path(keep_dir).mkdir(parents=True, exist_ok=True)
            write_volume(Volume(np.asarray(a), affine.copy(), name), Path(keep_dir) / f"{name}.nii.gz")

    local, m_local, chi = _field_to_chi(
        field, m, vox, b0_dir, bfr=bfr, inversion=inversion, magnitude=mag, tv_lambda=tv_lambda,
        bfr_passes=bfr_passes, reference="mean", csf_from=None, prog=prog, timings=timings,
        messages=messages, keep=keep, local_given=kind == "local")
    timings["total"] = sum(timings.values())
    prog.update(1.0, "done")

    def vol(a, name):
        return Volume(np.asarray(a), affine.copy(), name)
    return QSMResult(vol(chi, "QSM"), vol(m_local.astype(np.uint8), "qsm_mask"),
                     vol(field if kind == "total" else np.zeros_like(field), "total_field_ppm"),
                     vol(local, "local_field_ppm"), timings, messages, None, None,
                     vol(m.astype(np.uint8), "brain_mask"))
