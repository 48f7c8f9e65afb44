"""The two rigid registrations of the flow, one function each: GRE magnitude -> planning T1 and frame CT ->
planning T1. Each tries its mask settings in turn until one passes ``register_rigid``'s checks, so the
command line and the Slicer panel register the same images the same way.

Results are ``RigidResult`` (``fixed_from_moving``: moving RAS -> T1 RAS, 4x4); a ProcessingError names
every attempt when none passes.
"""
from __future__ import annotations

import numpy as np

from ..errors import ProcessingError
from ..volume import Volume
from .rigid import RigidResult, register_rigid

CT_AIR_HU = -300.0          # CT head mask threshold (HU): soft tissue and bone, not air or foam
CT_WINDOW_HU = (-200.0, 1500.0)
BRAIN_MARGIN_MM = 10.0      # brain masks grown to take in the skull (rigid with the brain; jaw and neck are not)


def head_mask(vol: Volume, threshold: float | None = None, opening: int = 2) -> Volume:
    """Head mask (uint8, same grid): above ``threshold`` (default 20 % of the 99th percentile), opened to
    drop thin structures (localizer rods), largest component, holes filled."""
    from scipy import ndimage
    d = np.asarray(vol.data, np.float32)
    thr = 0.2 * float(np.percentile(d, 99)) if threshold is None else threshold
    m = ndimage.binary_opening(d > thr, iterations=opening)
    lab, n = ndimage.label(m)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        m = lab == sizes.argmax()
    return vol.with_data(ndimage.binary_fill_holes(m).astype(np.uint8), name="head mask")


def with_margin(mask: Volume | None, margin_mm: float) -> Volume | None:
    """``mask`` grown by ``margin_mm`` (a Maurer distance map; same grid, uint8)."""
    if mask is None or margin_mm <= 0:
        return mask
    import SimpleITK as sitk
    m = Volume((np.asarray(mask.data) > 0).astype(np.uint8), mask.ras_from_ijk).to_sitk()
    dist = sitk.SignedMaurerDistanceMap(m, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    grown = sitk.GetArrayFromImage(dist <= margin_mm).transpose(2, 1, 0)
    return mask.with_data(grown.astype(np.uint8), name=f"{mask.name or 'mask'} + {margin_mm:g} mm")


def t1_brain_mask(t1: Volume) -> Volume | None:
    """The T1's brain mask (``atlas.brain_mask``), or None when it cannot be made (the callers then use
    the head)."""
    from .atlas import brain_mask
    try:
        return brain_mask(t1)
    except Exception:  # noqa: BLE001 -- a T1 that Otsu cannot split still registers on the head mask
        return None


def register_with_attempts(fixed: Volume, moving: Volume, attempts, progress=None, what: str = "registration",
                           messages: list | None = None) -> RigidResult:
    """``register_rigid`` with each keyword set of ``attempts`` in turn until one passes its checks.

    An attempt with ``reverse=True`` registers the fixed image to the moving one (masks swapped) and
    inverts the result; ``image`` replaces the moving image. Attempts after the first are noted in
    ``messages``. Raises ProcessingError naming the last failure when every attempt fails."""
    messages = [] if messages is None else messages
    last = None
    for k, kw in enumerate(attempts):
        kw = dict(kw)
        image = kw.pop("image", moving)
        reverse = kw.pop("reverse", False)
        try:
            if reverse:
                res = register_rigid(image, fixed, fixed_mask=kw.get("moving_mask"),
                                     moving_mask=kw.get("fixed_mask"), init=kw.get("init", "moments"),
                                     progress=progress)
                res = RigidResult(np.linalg.inv(res.fixed_from_moving), res.metric_initial, res.metric_final,
                                  res.converged, res.iterations, dict(res.qc, reversed=True))
            else:
                res = register_rigid(fixed, image, progress=progress, **kw)
            if k:
                messages.append(f"{what}: registered on attempt {k + 1} ({'reversed, ' if reverse else ''}"
                                f"masks {sorted(kw)})")
            return res
        except ProcessingError as exc:
            last = exc
            messages.append(f"{what}: attempt {k + 1} failed its checks ({str(exc)[:120]})")
    raise ProcessingError(f"{what} registration failed: {last}")


def register_gre_to_t1(t1: Volume, gre_magnitude: Volume, gre_brain_mask: Volume | None = None,
                       t1_brain: Volume | None = None, progress=None, messages: list | None = None) -> RigidResult:
    """GRE magnitude (own scanner geometry; first echo or any echo combination) -> planning T1.

    ``gre_brain_mask``: the QSM's brain mask on the GRE grid (the strongest cue); ``t1_brain``: the T1's
    brain mask if already computed (else made here). Both grown by BRAIN_MARGIN_MM (brain and skull:
    the skull's edges hold the pose, jaw and neck are left out); without the GRE's brain mask, no masks;
    then, as the one fallback, the reversed registration on head masks."""
    t1_head = head_mask(t1, opening=1)
    if t1_brain is None:
        t1_brain = t1_brain_mask(t1)
    mag_head = head_mask(gre_magnitude)
    # without the GRE's brain mask, no masks: the T1's brain mask alone restricts the samples on one side
    # only (the GRE's head is in them), which misleads a thin slab and fails the overlap check
    first = {} if gre_brain_mask is None else \
        dict(moving_mask=with_margin(gre_brain_mask, BRAIN_MARGIN_MM),
             fixed_mask=with_margin(t1_brain, BRAIN_MARGIN_MM) if t1_brain is not None else t1_head)
    attempts = [first,
                dict(moving_mask=mag_head, fixed_mask=t1_head, reverse=True)]
    return register_with_attempts(t1, gre_magnitude, attempts, progress, "GRE magnitude -> T1", messages)


def register_ct_to_t1(t1: Volume, ct: Volume, progress=None, messages: list | None = None) -> RigidResult:
    """Frame CT (HU, own geometry) -> planning T1 on head masks; as the one fallback, with the HU window
    clipped (metal and the localizer tamed)."""
    t1_head = head_mask(t1, opening=1)
    ct_head = head_mask(ct, threshold=CT_AIR_HU)
    clipped = ct.with_data(np.clip(np.asarray(ct.data, np.float32), *CT_WINDOW_HU))
    attempts = [dict(moving_mask=ct_head, fixed_mask=t1_head),
                dict(moving_mask=ct_head, fixed_mask=t1_head, image=clipped)]
    return register_with_attempts(t1, ct, attempts, progress, "CT -> T1", messages)


def looks_like_ct(vol: Volume) -> bool:
    """True for an image in Hounsfield units (air near -1000)."""
    return float(np.min(vol.data)) < -500.0


def register_to_t1(t1: Volume, image: Volume, progress=None, messages: list | None = None) -> RigidResult:
    """Any other image (not a GRE of this flow) -> planning T1: a CT in HU as ``register_ct_to_t1``,
    otherwise plain, then on head masks."""
    if looks_like_ct(image):
        return register_ct_to_t1(t1, image, progress, messages)
    attempts = [dict(), dict(moving_mask=head_mask(image), fixed_mask=head_mask(t1, opening=1))]
    return register_with_attempts(t1, image, attempts, progress, "image -> T1", messages)
